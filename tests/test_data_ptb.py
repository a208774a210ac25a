import pytest
import torch

from bnrnn.data.download import DataError, RemoteFile, fetch, md5sum
from bnrnn.data.ptb import PTBCorpus, PTBWordData, batchify, bptt_windows, num_windows


@pytest.fixture(scope="module")
def corpus(ptb_root):
    return PTBCorpus(root=str(ptb_root))


def test_token_counts_and_vocab(corpus):
    assert {s: corpus[s].numel() for s in ("train", "valid", "test")} == {
        "train": 929_589, "valid": 73_760, "test": 82_430}
    assert corpus.vocab_size == 10_000
    eos = corpus.vocab["<eos>"]
    # one <eos> per line: 42,068 / 3,370 / 3,761 lines
    assert [(corpus[s] == eos).sum().item() for s in ("train", "valid", "test")] == [42_068, 3_370, 3_761]
    first = (corpus.itos[i] for i in corpus["train"][:3])
    assert list(first) == ["aer", "banknote", "berlitz"]


def test_batchify_columns_are_contiguous_text():
    data = torch.arange(23)
    cols = batchify(data, 4)  # 5 tokens per column, 3 dropped
    assert cols.shape == (5, 4)
    assert cols[:, 1].tolist() == [5, 6, 7, 8, 9]


def test_bptt_windows_predict_every_token_once():
    cols = batchify(torch.arange(44), 2)  # 22 per column
    windows = list(bptt_windows(cols, 5))
    assert len(windows) == num_windows(cols, 5) == 5  # 21 predictions: 5+5+5+5+1
    assert [x.shape[0] for x, _ in windows] == [5, 5, 5, 5, 1]
    targets = torch.cat([y for _, y in windows])
    assert torch.equal(targets, cols[1:])
    for x, y in windows:
        assert torch.equal(x[1:], y[:-1])


def test_word_data_limits_and_dims(ptb_root):
    data = PTBWordData(root=str(ptb_root), batch_size=32, bptt=20, limit_batches=3)
    assert data.dims == {"vocab_size": 10_000}
    assert data.num_batches("train") == 3 and len(list(data.batches("train"))) == 3
    full = PTBWordData(root=str(ptb_root), batch_size=32, bptt=20)
    assert full.num_batches("train") == -(-(929_589 // 32 - 1) // 20) == 1453


def test_missing_file_names_file_and_fix(tmp_path, ptb_root):
    (tmp_path / "ptb.train.txt").write_bytes((ptb_root / "ptb.train.txt").read_bytes())
    with pytest.raises(DataError, match=r"missing dataset file .*ptb\.valid\.txt.*data\.root"):
        PTBCorpus(root=str(tmp_path))


def test_checksum_mismatch_names_both_sums(tmp_path, ptb_root):
    for name in ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"):
        (tmp_path / name).write_bytes((ptb_root / name).read_bytes())
    with open(tmp_path / "ptb.valid.txt", "a") as f:
        f.write(" extra\n")
    bad = md5sum(tmp_path / "ptb.valid.txt")
    with pytest.raises(DataError) as e:
        PTBCorpus(root=str(tmp_path))
    msg = str(e.value)
    assert "ptb.valid.txt" in msg and "aa0affc06ff7c36e977d7cd49e3839bf" in msg and bad in msg
    assert "data.root" in msg


def test_no_network_error_names_url_and_fix(tmp_path):
    f = RemoteFile("x.txt", "http://127.0.0.1:9/none/x.txt", "0" * 32)
    with pytest.raises(DataError, match=r"could not download x\.txt from http://127\.0\.0\.1:9.*data\.root"):
        fetch(f, root=None, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # no partial file left behind


def test_download_verifies_and_caches(tmp_path, ptb_root):
    src = ptb_root / "ptb.valid.txt"
    f = RemoteFile("ptb.valid.txt", src.as_uri(), "aa0affc06ff7c36e977d7cd49e3839bf")
    path = fetch(f, root=None, cache_dir=tmp_path / "cache")
    assert path.read_bytes() == src.read_bytes()
    wrong = RemoteFile("other.txt", src.as_uri(), "f" * 32)
    with pytest.raises(DataError, match="checksum mismatch for other.txt"):
        fetch(wrong, root=None, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "other.txt").exists()
