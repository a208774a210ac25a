import pytest
import torch

from bnrnn.data.download import SUBSET_MANIFEST, DataError, RemoteFile, fetch, md5sum
from bnrnn.data.ptb import PTB_FILES, PTBCorpus, PTBWordData, batchify, bptt_windows, num_windows

SPLITS = ("train", "valid", "test")


@pytest.fixture(scope="module")
def corpus(ptb_root):
    return PTBCorpus(root=str(ptb_root))


def file_lines(path):
    return path.read_text(encoding="utf-8").splitlines()


def test_token_counts_and_vocab(corpus, ptb_root):
    """On the fixture: every whitespace token of a line, then one <eos> per line; the
    vocabulary is the training split's tokens + <eos>, in order of first appearance."""
    lines = {s: file_lines(ptb_root / PTB_FILES[s].name) for s in SPLITS}
    assert {s: corpus[s].numel() for s in SPLITS} == {
        s: sum(len(line.split()) + 1 for line in lines[s]) for s in SPLITS}
    train_words = {w for line in lines["train"] for w in line.split()}
    assert corpus.vocab_size == len(train_words | {"<eos>"}) == len(corpus.itos)
    eos = corpus.vocab["<eos>"]
    assert [(corpus[s] == eos).sum().item() for s in SPLITS] == [len(lines[s]) for s in SPLITS]
    assert list(corpus.itos[i] for i in corpus["train"][:3]) == ["aer", "banknote", "berlitz"]
    # a window of the valid split decodes back to the file's text
    first = lines["valid"][0].split()
    assert [corpus.itos[i] for i in corpus["valid"][: len(first) + 1]] == [*first, "<eos>"]


@pytest.mark.full_data
def test_full_corpus_token_counts_and_vocab(full_data):
    corpus = PTBCorpus(root=str(full_data / "ptb"))
    assert {s: corpus[s].numel() for s in SPLITS} == {
        "train": 929_589, "valid": 73_760, "test": 82_430}
    assert corpus.vocab_size == 10_000
    eos = corpus.vocab["<eos>"]
    # one <eos> per line: 42,068 / 3,370 / 3,761 lines
    assert [(corpus[s] == eos).sum().item() for s in SPLITS] == [42_068, 3_370, 3_761]
    first = (corpus.itos[i] for i in corpus["train"][:3])
    assert list(first) == ["aer", "banknote", "berlitz"]
    full = PTBWordData(root=str(full_data / "ptb"), batch_size=32, bptt=20)
    assert full.num_batches("train") == -(-(929_589 // 32 - 1) // 20) == 1453


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


def test_word_data_limits_and_dims(ptb_root, corpus):
    data = PTBWordData(root=str(ptb_root), batch_size=32, bptt=20, limit_batches=3)
    assert data.dims == {"vocab_size": corpus.vocab_size}
    assert data.num_batches("train") == 3 and len(list(data.batches("train"))) == 3
    full = PTBWordData(root=str(ptb_root), batch_size=32, bptt=20)
    n = corpus["train"].numel()
    assert full.num_batches("train") == -(-(n // 32 - 1) // 20) == len(list(full.batches("train")))
    assert full.num_batches("train") > 3


def test_missing_file_names_file_and_fix(tmp_path, ptb_root):
    for name in ("ptb.train.txt", SUBSET_MANIFEST):
        (tmp_path / name).write_bytes((ptb_root / name).read_bytes())
    with pytest.raises(DataError, match=r"missing dataset file .*ptb\.valid\.txt.*data\.root"):
        PTBCorpus(root=str(tmp_path))


def copy_ptb(src, dest, manifest=True):
    for f in PTB_FILES.values():
        (dest / f.name).write_bytes((src / f.name).read_bytes())
    if manifest:
        (dest / SUBSET_MANIFEST).write_bytes((src / SUBSET_MANIFEST).read_bytes())


def test_checksum_mismatch_names_both_sums(tmp_path, ptb_root):
    copy_ptb(ptb_root, tmp_path)
    listed = md5sum(ptb_root / "ptb.valid.txt")
    with open(tmp_path / "ptb.valid.txt", "a") as f:
        f.write(" extra\n")
    bad = md5sum(tmp_path / "ptb.valid.txt")
    with pytest.raises(DataError) as e:
        PTBCorpus(root=str(tmp_path))
    msg = str(e.value)
    assert "ptb.valid.txt" in msg and listed in msg and bad in msg
    assert "data.root" in msg


def test_a_subset_without_its_manifest_is_refused(tmp_path, ptb_root):
    """Without SUBSET.md5 the fixture is held to the canonical MD5s, and fails them."""
    copy_ptb(ptb_root, tmp_path, manifest=False)
    with pytest.raises(DataError) as e:
        PTBCorpus(root=str(tmp_path))
    msg = str(e.value)
    assert "ptb.train.txt" in msg and PTB_FILES["train"].md5 in msg
    assert md5sum(ptb_root / "ptb.train.txt") in msg


def test_subset_manifest_is_used_only_for_the_files_it_lists(tmp_path, ptb_root, caplog):
    copy_ptb(ptb_root, tmp_path)
    caplog.set_level("WARNING", logger="bnrnn")
    assert PTBCorpus(root=str(tmp_path)).vocab_size > 1
    assert caplog.text.count("is a subset, not the canonical file") == 3
    lines = (tmp_path / SUBSET_MANIFEST).read_text().splitlines()
    (tmp_path / SUBSET_MANIFEST).write_text("".join(l + "\n" for l in lines if "test" not in l))
    with pytest.raises(DataError, match=r"checksum mismatch for .*ptb\.test\.txt: expected md5 "
                                         + PTB_FILES["test"].md5):
        PTBCorpus(root=str(tmp_path))


def test_no_network_error_names_url_and_fix(tmp_path):
    f = RemoteFile("x.txt", "http://127.0.0.1:9/none/x.txt", "0" * 32)
    with pytest.raises(DataError, match=r"could not download x\.txt from http://127\.0\.0\.1:9.*data\.root"):
        fetch(f, root=None, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # no partial file left behind


def test_download_verifies_and_caches(tmp_path, ptb_root):
    src = ptb_root / "ptb.valid.txt"
    f = RemoteFile("ptb.valid.txt", src.as_uri(), md5sum(src))
    path = fetch(f, root=None, cache_dir=tmp_path / "cache")
    assert path.read_bytes() == src.read_bytes()
    wrong = RemoteFile("other.txt", src.as_uri(), "f" * 32)
    with pytest.raises(DataError, match="checksum mismatch for other.txt"):
        fetch(wrong, root=None, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "other.txt").exists()
