"""LibriSpeech + CPC labels through the real path, on the 2-utterance fixture
(tests/fixtures/librispeech_sample): checksums, features cache, frames = labels, clear errors."""
import shutil

import numpy as np
import pytest
import torch

from bnrnn.data.download import DataError, md5sum
from bnrnn.data.speech.batching import IGNORE
from bnrnn.data.speech.librispeech import (LABELS_BLOB_SHA1, LibriSpeechData, extract_shard,
                                           git_blob_sha1, read_labels)

FIXTURE_LABELS_SHA1 = "1bffc11fdd95ba0d7904231876c5d0b6bd6f7fd5"  # its README: blob id in CPC_audio
TRAIN, TEST = "2911-12359-0007", "4051-11218-0044"


@pytest.fixture(scope="module")
def sample(librispeech_sample):
    return librispeech_sample


def make_root(path, sample, train=(TRAIN,), test=(TEST,)):
    """A data.root as LibriSpeechData expects it: the fixture's label file and split lists."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(sample / "phone_labels.txt", path / "phone_labels.txt")
    (path / "train_split.txt").write_text("".join(u + "\n" for u in train))
    (path / "test_split.txt").write_text("".join(u + "\n" for u in test))
    return path


def options(root, sample, cache, **kw):
    return dict(root=str(root), audio_dir=str(sample / "test_db"), cache_dir=str(cache),
                labels_file="phone_labels.txt", labels_sha1=FIXTURE_LABELS_SHA1,
                split_md5={s: md5sum(root / f"{s}_split.txt") for s in ("train", "test")},
                dev_fraction=0.0, workers=2, max_frames=None, progress=False) | kw


@pytest.fixture(scope="module")
def data(sample, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("librispeech")
    root = make_root(tmp / "root", sample)
    return LibriSpeechData(**options(root, sample, tmp / "cache"))


def test_git_blob_sha1_equals_published_blob_ids(sample):
    # the ids the fixture's README gives for its files in CPC_audio's git tree
    assert git_blob_sha1(sample / "phone_labels.txt") == FIXTURE_LABELS_SHA1
    assert (git_blob_sha1(sample / "test_db/2911/12359/2911-12359-0007.flac")
            == "94522a4dbd4343e83d4661af47db39835aa824ed")
    assert len(LABELS_BLOB_SHA1) == 40


def test_fixture_through_the_real_path(data, sample):
    labels = read_labels(sample / "phone_labels.txt")
    for split, uid, frames in (("train", TRAIN, 508), ("test", TEST, 1119)):
        assert data.num_batches(split) == 1
        features, lengths, y = next(data.batches(split))
        assert features.shape == (frames, 1, 123) and lengths.tolist() == [frames]
        assert len(labels[uid]) == frames  # feature frames = label count, one to one
        assert torch.equal(y[:, 0], torch.from_numpy(labels[uid].astype(np.int64)))
        assert int(y.max()) < 41 and (y != IGNORE).all()
    assert [s["mismatched"] for s in data.manifest["shards"]] == [[], []]
    assert data.manifest["config"]["labels"] == FIXTURE_LABELS_SHA1
    assert len(data.dims["feature_mean"]) == 123 and data.dims["num_classes"] == 41
    std = np.array(data.dims["feature_std"])
    assert (std > 0).all() and np.isfinite(std).all()


def test_cache_is_reused(data, sample, tmp_path_factory, monkeypatch):
    """A second construction reads the cache: no feature extraction, same arrays."""
    import bnrnn.data.speech.shards as shards

    monkeypatch.setattr(shards, "_progress", lambda *a, **k: pytest.fail("rebuilt the cache"))
    root = data.directory.parent.parent / "root"
    again = LibriSpeechData(**options(root, sample, data.directory.parent))
    assert again.directory == data.directory
    assert torch.equal(again.splits["test"].frames()[0], data.splits["test"].frames()[0])


def test_dev_split_and_long_utterance_drop(sample, tmp_path, caplog):
    root = make_root(tmp_path / "root", sample, train=(TRAIN, TEST), test=(TEST,))
    caplog.set_level("INFO", logger="bnrnn")
    d = LibriSpeechData(**options(root, sample, tmp_path / "cache", dev_fraction=0.5,
                                  max_frames=1300))
    assert sorted(d.splits["train"].ids + d.splits["dev"].ids) == sorted([TRAIN, TEST])
    assert d.dropped_long == 0 and "dropped 0 of 1 training utterances" in caplog.text


def test_length_mismatch_is_left_out_and_listed(sample, tmp_path):
    labels = read_labels(sample / "phone_labels.txt")
    flac = str(sample / "test_db/2911/12359/2911-12359-0007.flac")
    entry = extract_shard([(TRAIN, flac, labels[TRAIN][:-1])], str(tmp_path / "s.pt"))
    assert entry["utterances"] == 0 and entry["mismatched"] == [[TRAIN, 508, 507]]


def test_missing_label_file(sample, tmp_path):
    root = make_root(tmp_path / "root", sample)
    (root / "phone_labels.txt").unlink()
    with pytest.raises(DataError, match=r"missing label file .*phone_labels.txt.*data.root"):
        LibriSpeechData(**options(root, sample, tmp_path / "cache"))


def test_label_checksum_mismatch(sample, tmp_path):
    root = make_root(tmp_path / "root", sample)
    text = (root / "phone_labels.txt").read_text()
    (root / "phone_labels.txt").write_text(text.replace(" 35 ", " 36 ", 1))
    with pytest.raises(DataError, match=rf"checksum mismatch .*git blob sha1 {FIXTURE_LABELS_SHA1}"):
        LibriSpeechData(**options(root, sample, tmp_path / "cache"))


def test_split_list_checksum_mismatch(sample, tmp_path):
    """Our 1-line lists are not the CPC lists: with the default MD5s they are refused."""
    root = make_root(tmp_path / "root", sample)
    with pytest.raises(DataError, match=r"checksum mismatch .*train_split.txt.*6cdbf00c"):
        LibriSpeechData(**options(root, sample, tmp_path / "cache", split_md5=None))


def test_missing_audio(sample, tmp_path):
    root = make_root(tmp_path / "root", sample)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"audio files are missing.*2911-12359-0007.flac.*data.audio_dir"):
        LibriSpeechData(**options(root, sample, tmp_path / "cache", audio_dir=str(tmp_path / "empty")))
    with pytest.raises(DataError, match="is not a directory"):
        LibriSpeechData(**options(root, sample, tmp_path / "cache", audio_dir=str(tmp_path / "nope")))


def test_no_download_without_audio(sample, tmp_path):
    root = make_root(tmp_path / "root", sample)
    with pytest.raises(DataError, match="downloads are disabled"):
        LibriSpeechData(**options(root, sample, tmp_path / "cache", audio_dir=None, download=False))


def test_label_download_is_verified(sample, tmp_path):
    """The download path of the label file, offline through a file:// URL."""
    from bnrnn.data.speech.librispeech import fetch_labels

    url = (sample / "phone_labels.txt").as_uri()
    with pytest.raises(DataError, match="checksum mismatch"):
        fetch_labels("phone_labels.txt", root=None, cache_dir=tmp_path, sha1="0" * 40,
                     download_ok=True, url=url)
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left behind
    path = fetch_labels("phone_labels.txt", root=None, cache_dir=tmp_path,
                        sha1=FIXTURE_LABELS_SHA1, download_ok=True, url=url)
    assert path == tmp_path / "phone_labels.txt" and path.read_bytes() == (sample / "phone_labels.txt").read_bytes()


def test_audio_download_is_verified_then_unpacked(sample, tmp_path, monkeypatch):
    """ensure_audio end to end, offline: a small train-clean-100.tar.gz served from a file://
    URL is downloaded (lhotse), MD5-checked, unpacked, and the features come out as usual."""
    import tarfile

    from bnrnn.data.download import RemoteFile
    from bnrnn.data.speech import librispeech

    tree = tmp_path / "tree" / "LibriSpeech" / "train-clean-100"
    for uid in (TRAIN, TEST):
        spk, chapter, _ = uid.split("-")
        (tree / spk / chapter).mkdir(parents=True)
        shutil.copy(sample / "test_db" / spk / chapter / f"{uid}.flac", tree / spk / chapter)
    archive = tmp_path / "served.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "tree" / "LibriSpeech", arcname="LibriSpeech")
    root = make_root(tmp_path / "root", sample)
    cache = tmp_path / "cache"

    monkeypatch.setattr(librispeech, "AUDIO_ARCHIVE",
                        RemoteFile("train-clean-100.tar.gz", archive.as_uri(), "0" * 32))
    with pytest.raises(DataError, match=r"checksum mismatch .*train-clean-100.tar.gz"):
        LibriSpeechData(**options(root, sample, cache, audio_dir=None))
    assert not (cache / "LibriSpeech").exists()  # a bad archive is never unpacked

    (cache / "train-clean-100.tar.gz").unlink()
    monkeypatch.setattr(librispeech, "AUDIO_ARCHIVE",
                        RemoteFile("train-clean-100.tar.gz", archive.as_uri(), md5sum(archive)))
    d = LibriSpeechData(**options(root, sample, cache, audio_dir=None))
    assert (cache / "LibriSpeech" / "train-clean-100" / ".completed").is_file()
    assert d.splits["train"].num_frames == 508 and d.splits["test"].num_frames == 1119


def test_hydra_config_builds_the_same_data(data, sample):
    """configs/data/librispeech.yaml's keys are the constructor's: data=librispeech through
    Hydra, pointed at the fixture, reads the cache the direct construction wrote."""
    from hydra.utils import instantiate

    from tests.helpers import make_cfg

    root = data.directory.parent.parent / "root"
    md5 = {s: md5sum(root / f"{s}_split.txt") for s in ("train", "test")}
    cfg = make_cfg(["experiment=speech_librispeech", f"data.root={root}",
                    f"data.audio_dir={sample / 'test_db'}", f"data.cache_dir={data.directory.parent}",
                    "data.labels_file=phone_labels.txt", f"data.labels_sha1={FIXTURE_LABELS_SHA1}",
                    f"data.split_md5={{train: {md5['train']}, test: {md5['test']}}}",
                    "data.dev_fraction=0", "data.max_frames=null", "data.progress=false"])
    built = instantiate(cfg.data)
    assert built.directory == data.directory and built.dims["num_classes"] == 41
    assert built.batch_size == 24 and built.num_batches("test") == 1
