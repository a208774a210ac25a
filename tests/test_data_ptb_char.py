"""Character-level PTB: symbol counts on the real files, sequence cutting, shuffling, errors."""
import pytest
import torch

from bnrnn.data.download import DataError, md5sum
from bnrnn.data.ptb_char import (EOL, PTB_CHAR_FILES, PTBCharCorpus, PTBCharData, cut_sequences,
                                 epoch_permutation)


@pytest.fixture(scope="session")
def ptb_char_root(shared_data):
    return shared_data / "ptb_char"


@pytest.fixture(scope="module")
def corpus(ptb_char_root):
    return PTBCharCorpus(root=str(ptb_char_root))


def test_symbol_counts_and_classes(corpus):
    assert {s: corpus[s].numel() for s in ("train", "valid", "test")} == {
        "train": 5_017_482, "valid": 393_042, "test": 442_423}
    assert corpus.vocab_size == 50 and corpus.itos[0] == EOL
    # one end-of-line per line: 42,068 / 3,370 / 3,761 lines
    assert [(corpus[s] == 0).sum().item() for s in ("train", "valid", "test")] == [42_068, 3_370, 3_761]
    assert [len(corpus[s].unique()) for s in ("train", "valid", "test")] == [50, 50, 48]
    first = "".join(corpus.itos[i] for i in corpus["valid"][:9])
    assert first == "consumers"
    assert {"_", "<", ">", "N", "$"} <= set(corpus.itos)


def test_md5s_are_the_shared_copies(ptb_char_root):
    for f in PTB_CHAR_FILES.values():
        assert md5sum(ptb_char_root / f.name) == f.md5


def test_cut_sequences_targets_are_inputs_shifted():
    inputs, targets = cut_sequences(torch.arange(23), 5)  # (23 - 1) // 5 = 4 sequences
    assert inputs.shape == targets.shape == (4, 5)
    assert inputs[1].tolist() == [5, 6, 7, 8, 9] and targets[1].tolist() == [6, 7, 8, 9, 10]
    assert torch.equal(inputs.flatten() + 1, targets.flatten())  # non-overlapping, contiguous
    with pytest.raises(ValueError, match="seq_len"):
        cut_sequences(torch.arange(5), 10)


def test_shuffle_depends_on_seed_and_epoch_only():
    a, b = epoch_permutation(1000, 7, 3), epoch_permutation(1000, 7, 3)
    assert torch.equal(a, b) and sorted(a.tolist()) == list(range(1000))
    assert not torch.equal(a, epoch_permutation(1000, 7, 4))
    assert not torch.equal(a, epoch_permutation(1000, 8, 3))


def test_char_data_batches(ptb_char_root):
    data = PTBCharData(root=str(ptb_char_root), seq_len=100, batch_size=64, eval_batch_size=128, seed=3)
    assert data.stateful is False and data.dims == {"vocab_size": 50}
    assert data.num_batches("train") == (5_017_481 // 100) // 64 == 783  # last partial batch dropped
    assert data.num_batches("valid") == -(-(393_041 // 100) // 128) == 31  # every sequence kept
    x, y = next(iter(data.batches("train", epoch=1)))
    assert x.shape == y.shape == (100, 64) and x.dtype == torch.long
    assert torch.equal(x[1:], y[:-1])  # time-major, target = input shifted by one
    # epoch 1 is reproducible (resume) and differs from epoch 2
    again = next(iter(data.batches("train", epoch=1)))[0]
    other = next(iter(data.batches("train", epoch=2)))[0]
    assert torch.equal(x, again) and not torch.equal(x, other)
    # evaluation covers the whole split in stream order
    valid = list(data.batches("valid"))
    assert sum(b[0].shape[1] for b in valid) == 3930 and valid[-1][0].shape == (100, 3930 - 30 * 128)
    assert torch.equal(valid[0][0][:, 0], data.corpus["valid"][:100])
    limited = PTBCharData(root=str(ptb_char_root), batch_size=32, limit_batches=3)
    assert [len(list(limited.batches(s, 1))) for s in ("train", "valid", "test")] == [3, 3, 3]


def test_missing_file_names_file_and_fix(tmp_path, ptb_char_root):
    (tmp_path / "ptb.char.valid.txt").write_bytes((ptb_char_root / "ptb.char.valid.txt").read_bytes())
    with pytest.raises(DataError, match=r"missing dataset file .*ptb\.char\.train\.txt.*data\.root"):
        PTBCharCorpus(root=str(tmp_path))


def test_corrupt_file_names_both_sums(tmp_path, ptb_char_root):
    for f in PTB_CHAR_FILES.values():
        (tmp_path / f.name).symlink_to(ptb_char_root / f.name)
    (tmp_path / "ptb.char.test.txt").unlink()
    (tmp_path / "ptb.char.test.txt").write_text(" a b \n")
    with pytest.raises(DataError) as e:
        PTBCharCorpus(root=str(tmp_path))
    msg = str(e.value)
    assert "ptb.char.test.txt" in msg and PTB_CHAR_FILES["test"].md5 in msg
    assert md5sum(tmp_path / "ptb.char.test.txt") in msg and "data.root" in msg


def test_unknown_symbol_is_named(tmp_path):
    (tmp_path / "t.txt").write_text(" a b \n c \n ")
    assert PTBCharCorpus.tokenize(tmp_path / "t.txt") == ["a", "b", EOL, "c", EOL]
    corpus = PTBCharCorpus.__new__(PTBCharCorpus)
    corpus.vocab = {EOL: 0, "a": 1}
    with pytest.raises(ValueError, match=r"symbol 'b' of the valid split"):
        corpus.encode(["a", "b"], split="valid")
