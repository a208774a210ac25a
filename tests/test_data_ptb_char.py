"""Character-level PTB: symbol counts, sequence cutting, shuffling, errors (on the fixture;
the full corpus's counts with BNRNN_DATA)."""
import pytest
import torch

from bnrnn.data.download import SUBSET_MANIFEST, DataError, md5sum
from bnrnn.data.ptb_char import (EOL, PTB_CHAR_FILES, PTBCharCorpus, PTBCharData, cut_sequences,
                                 epoch_offset, epoch_permutation)

SPLITS = ("train", "valid", "test")


@pytest.fixture(scope="module")
def corpus(ptb_char_root):
    return PTBCharCorpus(root=str(ptb_char_root))


def test_symbol_counts_and_classes(corpus, ptb_char_root):
    """Every space-separated symbol of a line, then one end-of-line per line; the file's final
    " " after the last newline is no line. The fixture holds all 49 symbols + end-of-line."""
    text = {s: (ptb_char_root / PTB_CHAR_FILES[s].name).read_text(encoding="utf-8") for s in SPLITS}
    lines = {s: text[s].split("\n")[:-1] for s in SPLITS}
    assert all(text[s].endswith("\n ") for s in SPLITS)  # Mikolov's layout
    assert {s: corpus[s].numel() for s in SPLITS} == {
        s: sum(len(line.split()) + 1 for line in lines[s]) for s in SPLITS}
    assert corpus.vocab_size == 50 and corpus.itos[0] == EOL
    assert [(corpus[s] == 0).sum().item() for s in SPLITS] == [len(lines[s]) for s in SPLITS]
    assert len(corpus["train"].unique()) == 50
    first = "".join(corpus.itos[i] for i in corpus["valid"][:9])
    assert first == "consumers"
    assert {"_", "<", ">", "N", "$"} <= set(corpus.itos)


@pytest.mark.full_data
def test_full_corpus_symbol_counts_and_md5s(full_data):
    root = full_data / "ptb_char"
    for f in PTB_CHAR_FILES.values():  # the MD5s the loader holds are those of the full files
        assert md5sum(root / f.name) == f.md5
    corpus = PTBCharCorpus(root=str(root))
    assert {s: corpus[s].numel() for s in SPLITS} == {
        "train": 5_017_482, "valid": 393_042, "test": 442_423}
    assert corpus.vocab_size == 50 and corpus.itos[0] == EOL
    # one end-of-line per line: 42,068 / 3,370 / 3,761 lines
    assert [(corpus[s] == 0).sum().item() for s in SPLITS] == [42_068, 3_370, 3_761]
    assert [len(corpus[s].unique()) for s in SPLITS] == [50, 50, 48]
    data = PTBCharData(root=str(root), seq_len=100, batch_size=64, eval_batch_size=128, seed=3)
    assert data.num_batches("train") == (5_017_481 // 100) // 64 == 783  # last partial batch dropped
    assert data.num_batches("valid") == -(-(393_041 // 100) // 128) == 31  # every sequence kept
    # the official code's test stream: one example of 446,184 symbols (penntreebank_evaluate.py)
    assert PTBCharCorpus(root=str(root), encoding="cooijmans")["test"].numel() == 446_184


def test_cut_sequences_targets_are_inputs_shifted():
    inputs, targets = cut_sequences(torch.arange(23), 5)  # (23 - 1) // 5 = 4 sequences
    assert inputs.shape == targets.shape == (4, 5)
    assert inputs[1].tolist() == [5, 6, 7, 8, 9] and targets[1].tolist() == [6, 7, 8, 9, 10]
    assert torch.equal(inputs.flatten() + 1, targets.flatten())  # non-overlapping, contiguous
    with pytest.raises(ValueError, match="seq_len"):
        cut_sequences(torch.arange(5), 10)


def test_disjoint_examples_predict_their_last_symbols():
    """Cooijmans' code: examples of L + 1 symbols, L steps, the first symbol of each unpredicted."""
    inputs, targets = cut_sequences(torch.arange(23), 4, "disjoint")  # 23 // 5 = 4 examples
    assert inputs.shape == targets.shape == (4, 4)
    assert inputs[1].tolist() == [5, 6, 7, 8] and targets[1].tolist() == [6, 7, 8, 9]
    assert 5 not in targets and 10 not in targets  # each example's first symbol
    inputs, targets = cut_sequences(torch.arange(23), 4, "disjoint", offset=4, count=3)
    assert inputs[:, 0].tolist() == [4, 9, 14] and targets[-1].tolist() == [15, 16, 17, 18]
    with pytest.raises(ValueError, match="examples must be one of shifted, disjoint"):
        cut_sequences(torch.arange(23), 5, "overlapping")


def test_random_crop_offsets_are_per_epoch_and_keep_the_batch_count(ptb_char_root, corpus):
    data = PTBCharData(root=str(ptb_char_root), seq_len=19, batch_size=8, seed=5, crop="random",
                       examples="disjoint")  # the code's examples of 20 symbols
    stream = corpus["train"]
    S = stream.numel() // 20 - 1  # penntreebank.py: int(len / length) - 1 with augment
    assert len(data.sequences["train"][0]) == S
    offsets = [epoch_offset(20, 5, e) for e in range(1, 9)]
    assert all(0 <= o < 20 for o in offsets) and len(set(offsets)) > 1
    assert offsets == [epoch_offset(20, 5, e) for e in range(1, 9)]  # resumable
    for epoch, offset in zip((1, 2), offsets):
        inputs, targets = data.epoch_sequences("train", epoch)
        assert inputs.shape == (S, 19)
        assert torch.equal(inputs[3], stream[offset + 60: offset + 79])
        assert torch.equal(targets[3], stream[offset + 61: offset + 80])
        assert sum(b[0].shape[1] for b in data.batches("train", epoch)) == (S // 8) * 8
    # evaluation never crops; an uncropped run is unchanged
    assert torch.equal(data.epoch_sequences("valid", 3)[0], cut_sequences(corpus["valid"], 19, "disjoint")[0])
    plain = PTBCharData(root=str(ptb_char_root), seq_len=20, batch_size=8, seed=5)
    assert torch.equal(plain.epoch_sequences("train", 2)[0], cut_sequences(stream, 20)[0])


def test_cooijmans_encoding_ends_each_line_with_boundary_and_eol(ptb_char_root, corpus):
    official = PTBCharCorpus(root=str(ptb_char_root), encoding="cooijmans")
    assert official.itos == corpus.itos  # the same 50 classes
    eol, boundary = corpus.vocab[EOL], corpus.vocab["_"]
    for split in SPLITS:
        lines = int((corpus[split] == eol).sum())
        assert official[split].numel() == corpus[split].numel() + lines
        ends = (official[split] == eol).nonzero().squeeze(1)
        assert torch.all(official[split][ends - 1] == boundary)
        assert torch.equal(official[split][official[split] != boundary],
                           corpus[split][corpus[split] != boundary])
    with pytest.raises(ValueError, match="encoding must be one of bnrnn, cooijmans"):
        PTBCharCorpus(root=str(ptb_char_root), encoding="npz")


def test_shuffle_depends_on_seed_and_epoch_only():
    a, b = epoch_permutation(1000, 7, 3), epoch_permutation(1000, 7, 3)
    assert torch.equal(a, b) and sorted(a.tolist()) == list(range(1000))
    assert not torch.equal(a, epoch_permutation(1000, 7, 4))
    assert not torch.equal(a, epoch_permutation(1000, 8, 3))


def test_char_data_batches(ptb_char_root, corpus):
    data = PTBCharData(root=str(ptb_char_root), seq_len=100, batch_size=64, eval_batch_size=128, seed=3)
    assert data.stateful is False and data.dims == {"vocab_size": 50}
    n_train, n_valid = corpus["train"].numel(), corpus["valid"].numel()
    assert data.num_batches("train") == ((n_train - 1) // 100) // 64 >= 2  # last partial batch dropped
    sequences = (n_valid - 1) // 100
    assert sequences % 128 and data.num_batches("valid") == -(-sequences // 128) >= 2  # all kept
    x, y = next(iter(data.batches("train", epoch=1)))
    assert x.shape == y.shape == (100, 64) and x.dtype == torch.long
    assert torch.equal(x[1:], y[:-1])  # time-major, target = input shifted by one
    # epoch 1 is reproducible (resume) and differs from epoch 2
    again = next(iter(data.batches("train", epoch=1)))[0]
    other = next(iter(data.batches("train", epoch=2)))[0]
    assert torch.equal(x, again) and not torch.equal(x, other)
    # evaluation covers the whole split in stream order, the last batch partial
    valid = list(data.batches("valid"))
    last = sequences - (len(valid) - 1) * 128
    assert sum(b[0].shape[1] for b in valid) == sequences and valid[-1][0].shape == (100, last)
    assert torch.equal(valid[0][0][:, 0], data.corpus["valid"][:100])
    assert torch.equal(torch.cat([b[0].t() for b in valid]).flatten(),
                       corpus["valid"][: sequences * 100])
    limited = PTBCharData(root=str(ptb_char_root), batch_size=32, eval_batch_size=32, limit_batches=3)
    assert [len(list(limited.batches(s, 1))) for s in SPLITS] == [3, 3, 3]


def test_missing_file_names_file_and_fix(tmp_path, ptb_char_root):
    for name in ("ptb.char.valid.txt", SUBSET_MANIFEST):
        (tmp_path / name).write_bytes((ptb_char_root / name).read_bytes())
    with pytest.raises(DataError, match=r"missing dataset file .*ptb\.char\.train\.txt.*data\.root"):
        PTBCharCorpus(root=str(tmp_path))


def test_corrupt_file_names_both_sums(tmp_path, ptb_char_root):
    for name in [f.name for f in PTB_CHAR_FILES.values()] + [SUBSET_MANIFEST]:
        (tmp_path / name).symlink_to(ptb_char_root / name)
    (tmp_path / "ptb.char.test.txt").unlink()
    (tmp_path / "ptb.char.test.txt").write_text(" a b \n")
    with pytest.raises(DataError) as e:
        PTBCharCorpus(root=str(tmp_path))
    msg = str(e.value)
    assert "ptb.char.test.txt" in msg and md5sum(ptb_char_root / "ptb.char.test.txt") in msg
    assert md5sum(tmp_path / "ptb.char.test.txt") in msg and "data.root" in msg


def test_unknown_symbol_is_named(tmp_path):
    (tmp_path / "t.txt").write_text(" a b \n c \n ")
    assert PTBCharCorpus.tokenize(tmp_path / "t.txt") == ["a", "b", EOL, "c", EOL]
    corpus = PTBCharCorpus.__new__(PTBCharCorpus)
    corpus.vocab = {EOL: 0, "a": 1}
    with pytest.raises(ValueError, match=r"symbol 'b' of the valid split"):
        corpus.encode(["a", "b"], split="valid")
