"""LibriSpeech train-clean-100 with the CPC frame-level phone labels (``docs/reference.md`` §5).

The public stand-in for Laurent et al.'s WSJ alignments: 41 phone classes (0 = silence), one
label per 10 ms Kaldi frame, the CPC train/test utterance lists (22,829 / 5,707 utterances of
the same 251 speakers). A dev split is carved from the train list (``dev_fraction``, 10 % as
in s3prl's ``phone_linear``, drawn with our own seeded generator, not s3prl's exact pick).

Files and their checksums:

- audio: ``train-clean-100.tar.gz`` from OpenSLR SLR12 (MD5 from openslr's md5sum.txt),
  downloaded with lhotse's resumable downloader, verified, then unpacked with lhotse's
  ``safe_extract``; or a local copy in the LibriSpeech layout ``<spk>/<chapter>/<utt>.flac``
  (``data.audio_dir``, or ``<data.root>/LibriSpeech/train-clean-100``);
- ``train_split.txt``, ``test_split.txt``: the CPC lists, MD5-checked (the MD5s of
  the copies at that commit), from s3prl at a pinned commit or from ``data.root``;
- ``converted_aligned_phones.txt``: no MD5 of it is published. What *is* published is its git
  blob id in s3prl's tree at the same pinned commit, ``d66ab549…`` = SHA-1 of
  ``"blob <size>\\0" + content`` (``git hash-object``); bnrnn downloads the file from that
  commit and verifies this id (``data.labels_sha1``). A copy from the CPC Drive folder should
  be byte-identical; if yours is not, set ``data.labels_sha1`` to its blob id
  (``git hash-object converted_aligned_phones.txt``), or to null to skip the check (a warning
  then logs the file's MD5 so the run still records which file it used).

Features (``features.py``) are computed once per utterance, in parallel worker processes,
into the shard cache of ``shards.py`` under ``cache_dir/features-<key>/`` with a progress
bar. Utterances whose label count differs from ``T = (n_samples - 400) // 160 + 1`` are left
out and listed in the manifest (none are expected: the labels were made on this framing).
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from bnrnn.data.download import DataError, RemoteFile, download, fetch, md5sum, verify
from bnrnn.data.speech.batching import SpeechData
from bnrnn.data.speech.features import FEATURE_CONFIG, SAMPLE_RATE, fbank
from bnrnn.data.speech.shards import ShardJob, build, cache_key, load_splits

log = logging.getLogger("bnrnn")

NUM_CLASSES = 41
AUDIO_ARCHIVE = RemoteFile("train-clean-100.tar.gz",
                           "https://www.openslr.org/resources/12/train-clean-100.tar.gz",
                           "2a93770f6d5c6c964bc36631d331a522")
S3PRL_COMMIT = "ec8064b5889f81ca460fbe2c094ce576a6f120b7"
_S3PRL = (f"https://raw.githubusercontent.com/s3prl/s3prl/{S3PRL_COMMIT}"
          "/s3prl/downstream/phone_linear/data/")
SPLIT_FILES = {
    "train": RemoteFile("train_split.txt", _S3PRL + "train_split.txt", "6cdbf00c1efdcc1190d18643bd971f62"),
    "test": RemoteFile("test_split.txt", _S3PRL + "test_split.txt", "5e26b06a32c883fc35b5f2bcb7c14cd9"),
}
LABELS_FILE = "converted_aligned_phones.txt"
LABELS_URL = _S3PRL + LABELS_FILE
LABELS_BLOB_SHA1 = "d66ab549a9ff96931d0d0bc982cc0be56117fe98"  # s3prl tree at S3PRL_COMMIT


def git_blob_sha1(path: str | Path, chunk: int = 1 << 20) -> str:
    """``git hash-object path``: SHA-1 of ``b"blob <size>\\0"`` followed by the content."""
    path = Path(path)
    h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _check_labels(path: Path, sha1: str | None, hint: str) -> Path:
    if sha1 is None:
        log.warning("%s is not verified (data.labels_sha1=null); its md5 is %s", path, md5sum(path))
        return path
    actual = git_blob_sha1(path)
    if actual != sha1:
        raise DataError(f"checksum mismatch for {path}: expected git blob sha1 {sha1}, got "
                        f"{actual}. The file is corrupt or a different version. {hint}")
    return path


def fetch_labels(name: str, *, root: str | Path | None, cache_dir: str | Path, sha1: str | None,
                 download_ok: bool, url: str = LABELS_URL) -> Path:
    """A verified local copy of the label file (``root/name`` or ``cache_dir/name``)."""
    hint = (f"Point data.root at a directory holding a verified copy of {name}, set "
            f"data.labels_sha1 to the blob id of your copy (`git hash-object {name}`), or delete "
            f"the file to download it again.")
    if root is not None:
        path = Path(root).expanduser() / name
        if not path.is_file():
            raise DataError(f"missing label file {path} (data.root={root}). Put the CPC "
                            f"{LABELS_FILE} there (from {url} or the CPC_audio README's Drive "
                            f"folder), or unset data.root to download it.")
        return _check_labels(path, sha1, hint)
    path = Path(cache_dir).expanduser() / name
    if path.is_file():
        return _check_labels(path, sha1, hint)
    if not download_ok:
        raise DataError(f"missing label file {path} and downloads are disabled. {hint}")
    return download(url, path, hint=hint, check=lambda p: _check_labels(p, sha1, hint))


def read_split_list(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_labels(path: Path, wanted: set[str] | None = None) -> dict[str, np.ndarray]:
    """``<utt-id> l1 l2 ... lT`` per line -> {utt-id: (T,) int16} (only ``wanted`` ids)."""
    labels = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            uid, _, rest = line.strip().partition(" ")
            if not uid or (wanted is not None and uid not in wanted):
                continue
            try:
                y = np.array(rest.split(), dtype=np.int16)
            except ValueError:
                raise DataError(f"{path}:{n}: expected '<utt-id> int int ...'") from None
            if len(y) == 0 or y.min() < 0 or y.max() >= NUM_CLASSES:
                raise DataError(f"{path}:{n}: utterance {uid} has no labels or labels outside "
                                f"[0, {NUM_CLASSES})")
            labels[uid] = y
    return labels


def audio_path(audio_dir: Path, uid: str) -> Path:
    """LibriSpeech layout: ``<spk>/<chapter>/<spk>-<chapter>-<utt>.flac``."""
    speaker, chapter, _ = uid.split("-")
    return audio_dir / speaker / chapter / f"{uid}.flac"


def ensure_audio(cache_dir: Path, download_ok: bool) -> Path:
    """``cache_dir/LibriSpeech/train-clean-100``, downloaded (lhotse, resumable), MD5-checked
    and unpacked (lhotse's ``safe_extract``) on first use."""
    corpus = cache_dir / "LibriSpeech" / "train-clean-100"
    done = corpus / ".completed"
    if done.is_file():
        return corpus
    archive = cache_dir / AUDIO_ARCHIVE.name
    hint = ("Point data.audio_dir at an unpacked LibriSpeech train-clean-100, or delete the "
            "archive to download it again.")
    if not archive.is_file() or archive.stat().st_size == 0:
        if not download_ok:
            raise DataError(f"LibriSpeech audio not found in {corpus} and downloads are disabled "
                            f"(data.download=false). {hint}")
        from lhotse.utils import resumable_download

        cache_dir.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s (6.4 GB) to %s", AUDIO_ARCHIVE.url, archive)
        try:
            resumable_download(AUDIO_ARCHIVE.url, filename=archive)
        except Exception as e:  # lhotse raises urllib/requests errors
            raise DataError(f"could not download {AUDIO_ARCHIVE.url} ({e}). {hint}") from e
    verify(archive, AUDIO_ARCHIVE.md5, hint=hint)
    from lhotse.utils import safe_extract

    shutil.rmtree(corpus, ignore_errors=True)
    log.info("unpacking %s", archive)
    with tarfile.open(archive) as tar:
        safe_extract(tar, path=cache_dir)
    done.touch()
    return corpus


def extract_shard(items: list[tuple[str, str, np.ndarray]], out_path: str) -> dict:
    """Worker: features of every (utt-id, flac path, labels) item; writes the shard.

    Utterances whose label count differs from their frame count are left out and listed.
    """
    import soundfile as sf

    from bnrnn.data.speech.shards import write_shard

    ids, feats, labels, mismatched, seconds = [], [], [], [], 0.0
    for uid, path, y in items:
        wav, sr = sf.read(path, dtype="int16")
        if sr != SAMPLE_RATE or wav.ndim != 1:
            raise DataError(f"{path}: expected 16 kHz mono audio; got {sr} Hz, shape {wav.shape}")
        x = fbank(wav.astype(np.float32), sr)
        seconds += len(wav) / sr
        if len(x) != len(y):
            mismatched.append([uid, len(x), len(y)])
            continue
        ids.append(uid)
        feats.append(x)
        labels.append(y)
    entry = write_shard(out_path, ids, feats, labels)
    return entry | {"mismatched": mismatched, "seconds": round(seconds, 3)}


class LibriSpeechData(SpeechData):
    """LibriSpeech train-clean-100 + CPC phone labels for the trainer (batches as in
    :class:`SpeechData`; splits ``train``, ``dev`` (from the train list) and ``test``).

    Args:
        root: local directory with ``labels_file``, ``train_split.txt`` and ``test_split.txt``
            (and optionally ``LibriSpeech/train-clean-100/``); None downloads them into
            ``cache_dir``.
        audio_dir: LibriSpeech train-clean-100 in its own layout; default
            ``<root>/LibriSpeech/train-clean-100`` if present, else ``cache_dir``'s copy
            (downloaded on first use when ``download``).
        cache_dir: downloads and the feature cache (``data.cache_dir``).
        labels_file, labels_sha1: the label file's name and git blob id (None: unchecked).
        split_md5: MD5 per split list; defaults to the CPC lists'.
        dev_fraction, dev_seed: the share of the train list held out as dev (0: no dev split).
        shard_size, workers: utterances per cache shard, parallel feature processes.
        batch_size, eval_batch_size, max_frames, sort_pool, limit_batches, pad_multiple, batch_seed: see
            :class:`SpeechData`.
        progress: progress bar while features are computed.
    """

    @classmethod
    def local_files(cls, data: Mapping) -> tuple[list[str], str]:
        """The files a configuration ``data`` reads from its ``root`` (or, without one, from the
        cache it names second), for ``bnrnn.config.check_data_files`` before any work."""
        return [f.name for f in SPLIT_FILES.values()] + [data.get("labels_file", LABELS_FILE)], "cache_dir"

    def __init__(self, root: str | None = None, audio_dir: str | None = None,
                 cache_dir: str = "~/.cache/bnrnn/librispeech", download: bool = True,
                 labels_file: str = LABELS_FILE, labels_sha1: str | None = LABELS_BLOB_SHA1,
                 split_md5: dict[str, str] | None = None, dev_fraction: float = 0.1,
                 dev_seed: int = 1337, shard_size: int = 500, workers: int = 4,
                 batch_size: int = 24, eval_batch_size: int = 24, max_frames: int | None = 1300,
                 sort_pool: int = 50, limit_batches: int | None = None, pad_multiple: int | None = None,
                 batch_seed: int = 0,
                 progress: bool = True):
        cache = Path(cache_dir).expanduser()
        md5s = {s: f.md5 for s, f in SPLIT_FILES.items()} | dict(split_md5 or {})
        lists = {}
        for split, file in SPLIT_FILES.items():
            file = RemoteFile(file.name, file.url, md5s[split])
            lists[split] = read_split_list(fetch(file, root=root, cache_dir=cache, download_ok=download))
        labels_path = fetch_labels(labels_file, root=root, cache_dir=cache, sha1=labels_sha1,
                                   download_ok=download)
        audio = self._audio_dir(root, audio_dir, cache, download)

        config = {
            "corpus": "librispeech_cpc",
            "labels": labels_sha1 or f"md5:{md5sum(labels_path)}",
            "split_md5": md5s,
            "shard_size": shard_size,
            "features": FEATURE_CONFIG,
        }
        directory = cache / f"features-{cache_key(config)}"
        if (directory / "manifest.json").is_file():
            jobs = []  # built already: build() only loads the manifest
        else:
            jobs = self._jobs(lists, labels_path, audio, shard_size)
        self.directory = directory
        self.manifest = build(directory, config, jobs, extract_shard, workers=workers,
                              desc=f"LibriSpeech features into {directory}", progress=progress)
        mismatched = [m for s in self.manifest["shards"] for m in s.get("mismatched", [])]
        if mismatched:
            log.warning("LibriSpeech: %d utterances left out: label count != frame count "
                        "(first: %s)", len(mismatched), mismatched[:3])
        splits = load_splits(directory, self.manifest)
        if dev_fraction > 0:
            train = splits["train"]
            perm = np.random.default_rng(dev_seed).permutation(len(train))
            n_dev = int(round(dev_fraction * len(train)))
            if not 0 < n_dev < len(train):
                raise ValueError(f"LibriSpeechData: dev_fraction={dev_fraction} leaves {n_dev} of "
                                 f"{len(train)} training utterances for dev")
            splits["dev"] = train.select(np.sort(perm[:n_dev]))
            splits["train"] = train.select(np.sort(perm[n_dev:]))
        super().__init__(splits, num_classes=NUM_CLASSES, batch_size=batch_size,
                         eval_batch_size=eval_batch_size, max_frames=max_frames, seed=batch_seed,
                         sort_pool=sort_pool, limit_batches=limit_batches,
                         pad_multiple=pad_multiple)

    @staticmethod
    def _audio_dir(root, audio_dir, cache: Path, download: bool) -> Path:
        if audio_dir is not None:
            path = Path(audio_dir).expanduser()
            if not path.is_dir():
                raise DataError(f"data.audio_dir={audio_dir} is not a directory; point it at "
                                f"LibriSpeech/train-clean-100 (layout <spk>/<chapter>/<utt>.flac)")
            return path
        if root is not None and (p := Path(root).expanduser() / "LibriSpeech" / "train-clean-100").is_dir():
            return p
        return ensure_audio(cache, download)

    @staticmethod
    def _jobs(lists: dict[str, list[str]], labels_path: Path, audio: Path,
              shard_size: int) -> list[ShardJob]:
        wanted = {u for ids in lists.values() for u in ids}
        labels = read_labels(labels_path, wanted)
        jobs = []
        for split, ids in lists.items():
            unlabeled = [u for u in ids if u not in labels]
            if unlabeled:
                log.warning("LibriSpeech %s: %d of %d listed utterances have no labels in %s "
                            "(left out; first: %s)", split, len(unlabeled), len(ids),
                            labels_path.name, unlabeled[:3])
            items = [(u, str(audio_path(audio, u)), labels[u]) for u in ids if u in labels]
            if not items:
                raise DataError(f"LibriSpeech {split}: none of the {len(ids)} listed utterances "
                                f"has labels in {labels_path}")
            missing = [p for _, p, _ in items if not os.path.isfile(p)]
            if missing:
                raise DataError(f"LibriSpeech {split}: {len(missing)} of {len(items)} audio files "
                                f"are missing, e.g. {missing[0]}. Point data.audio_dir at a "
                                f"complete LibriSpeech/train-clean-100 (layout "
                                f"<spk>/<chapter>/<utt>.flac), or unset it to download the corpus.")
            for i in range(0, len(items), shard_size):
                jobs.append(ShardJob(split, i // shard_size, items[i:i + shard_size]))
        return jobs
