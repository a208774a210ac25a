"""The feature cache shared by both speech corpora: one Hugging Face ``datasets`` Arrow table per
split, memory-mapped on open, plus a manifest.

Layout of one cached corpus (a directory named ``<corpus>-<key>``, where ``key`` hashes
everything that determines its content, :data:`FORMAT_VERSION` included, so two configurations
or two storage formats never share a directory)::

    manifest.json        completion marker, written last: config, per-shard counts, the sha256
                         and size of every file below
    dataset_dict.json    {"splits": [...]}: ``datasets.load_from_disk(<dir>)`` is a DatasetDict
    train/               Dataset.save_to_disk: data-0000k-of-0000n.arrow, dataset_info.json,
    dev/, test/          state.json
    parts/               only while building: one torch shard per worker (deleted when done)

A row of a split is one utterance (``ARROW_FEATURES``)::

    id      string
    feats   list<fixed_size_list<float32>[41]>   (T, 41) static Kaldi features (features.fbank)
    labels  list<int16>                           (T,) class per frame

so ``datasets.load_from_disk(dir)["train"].with_format("torch")[0]["feats"]`` is a (T, 41)
tensor. That per-row formatter costs milliseconds per utterance, so bnrnn itself reads the
frames as zero-copy numpy views of the memory-mapped Arrow buffers (:func:`arrow_utterances`):
opening costs O(utterances) memory (ids and lengths), not O(frames), and a batch reads its
frames straight from the page cache. The tensors are read-only views; never write into them.

Building. Each shard of utterances is computed in a fresh worker process
(``max_tasks_per_child=1``; libespeak-ng is reproducible only from a fresh process, and the parent
stays free of native-library state) and written as a torch shard (:func:`write_shard`) into
``parts/`` with its entry beside it; an interrupted build keeps its finished parts. When every
part exists, each split is written once with ``Dataset.from_generator`` (reading the parts)
and ``save_to_disk`` into a temporary directory that is renamed into place, then the manifest,
then ``parts/`` is deleted. A directory without a manifest is never read. Equal configurations
give equal bytes: torch's zip has no timestamps, the Arrow IPC files carry none, and the
fingerprint that ``state.json`` records is derived from the cache key instead of drawn at random.

Checksums. Opening checks that every file in the manifest exists with its recorded size (free;
it catches truncation), and computes each file's sha256 once per process (memoized on the
file's path, size, mtime and inode): hashing costs about a second per GB (see
``results/bench_speech_corpus.md``), which a training run pays once, while a process that
reopens the same corpus (tests, sweeps of data modules) does not pay it again.
``verify=False`` skips the hashes.

Why Arrow and not the torch shards memory-mapped in place (``results/bench_speech_corpus.md``:
4.1 h measured on a shared 2-core CPU, 50 h projected linearly). Both open in constant memory
(anonymous RSS 207 vs 205 MiB, the interpreter's own 204), where format 1's concatenation held
the whole corpus (439 MiB, 3 GB projected). An epoch of batches costs the same from both and
from format 1's in-memory arrays (0.861, 0.865 and 0.953 s, the three alternating in one
process). Reopening is fastest from Arrow (0.014 s, constant, against 0.071 and 0.30 s); the
first open in a process is dominated by the sha256 (0.25 s) and within noise of mmap shards.
Arrow loses the write: 4.4 s against 1.8 s for torch shards (36 s against 22 s projected at
50 h); it comes on top of the workers' shards, 0.5 % of generating the corpus, paid once. It
gains a format every user can open. Batches never go through ``datasets``' per-row formatter,
which is 40x slower per epoch (36.6 s).

Caches of format 1 (torch shards loaded whole, before this format) live under another key; a
build that finds the format-1 cache of the same configuration converts its shards instead of
computing them again, and leaves it in place.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bnrnn.data.download import DataError, sha256sum
from bnrnn.data.speech.features import STATIC_DIM
from bnrnn.io import torch_save, write_json

log = logging.getLogger("bnrnn")

FORMAT_VERSION = 2  # 1: torch shards (the parts below), loaded whole and concatenated
SHARD_FORMAT = 1  # the torch shards that workers write (format 1's files)
PARTS = "parts"
DATASET_DICT = "dataset_dict.json"


@dataclass
class Utterances:
    """Utterances of one split over blocks of frames, shared, never copied.

    ``blocks[k] = (feats (N_k, 41) float32, labels (N_k,) int16)``; utterance i is rows
    ``offsets[i] : offsets[i] + lengths[i]`` of block ``block[i]`` (``block``, ``offsets``,
    ``lengths``: (n,) int64). A block is a memory-mapped Arrow record batch, a torch shard or
    an in-memory array. Selecting (:meth:`select`) and concatenating (:meth:`concat`) share
    the blocks.
    """

    ids: list[str]
    block: torch.Tensor
    offsets: torch.Tensor
    lengths: torch.Tensor
    blocks: list[tuple[torch.Tensor, torch.Tensor]]

    def __post_init__(self):
        n = len(self.ids)
        for name in ("block", "offsets", "lengths"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"Utterances: {name} must have shape ({n},); got "
                                 f"{tuple(getattr(self, name).shape)}")
        for k, (feats, labels) in enumerate(self.blocks):
            if feats.shape[0] != labels.shape[0]:
                raise ValueError(f"Utterances: block {k}: feats {tuple(feats.shape)} and labels "
                                 f"{tuple(labels.shape)} must have the same number of frames")
        if n:
            if int(self.block.min()) < 0 or int(self.block.max()) >= len(self.blocks):
                raise ValueError(f"Utterances: block indices must lie in [0, {len(self.blocks)})")
            sizes = torch.tensor([f.shape[0] for f, _ in self.blocks], dtype=torch.int64)
            if bool((self.offsets < 0).any()) or bool((self.offsets + self.lengths > sizes[self.block]).any()):
                raise ValueError("Utterances: an utterance runs past the end of its block")

    @staticmethod
    def packed(ids: list[str], lengths: torch.Tensor, feats: torch.Tensor,
               labels: torch.Tensor) -> "Utterances":
        """Utterances stored back to back in one block (a shard's layout)."""
        if int(lengths.sum()) != feats.shape[0]:
            raise ValueError(f"Utterances: Σ lengths = {int(lengths.sum())} but feats has "
                             f"{feats.shape[0]} rows")
        offsets = torch.zeros(len(ids), dtype=torch.int64)
        if len(ids) > 1:
            torch.cumsum(lengths[:-1], 0, out=offsets[1:])
        return Utterances(list(ids), torch.zeros(len(ids), dtype=torch.int64), offsets,
                          lengths.to(torch.int64), [(feats, labels)])

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (feats (T_i, 41), labels (T_i,)) of utterance i (views, no copy)."""
        feats, labels = self.blocks[int(self.block[i])]
        a = int(self.offsets[i])
        b = a + int(self.lengths[i])
        return feats[a:b], labels[a:b]

    @property
    def num_frames(self) -> int:
        return int(self.lengths.sum())

    def frames(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every utterance's frames in order, copied into one (Σ T_i, 41) and one (Σ T_i,)
        tensor (for inspection and tests; training reads the views of ``self[i]``)."""
        if not len(self):
            return torch.zeros(0, STATIC_DIM), torch.zeros(0, dtype=torch.int16)
        items = [self[i] for i in range(len(self))]
        return torch.cat([f for f, _ in items]), torch.cat([y for _, y in items])

    def label_range(self) -> tuple[int, int]:
        """(min, max) label over every frame of the blocks (0, 0 when there are none)."""
        used = [self.blocks[k][1] for k in sorted(set(self.block.tolist()))]
        used = [y for y in used if y.numel()]
        if not used:
            return 0, 0
        return min(int(y.min()) for y in used), max(int(y.max()) for y in used)

    @staticmethod
    def concat(parts: Sequence["Utterances"]) -> "Utterances":
        """One split from several, sharing their blocks (nothing is copied)."""
        if not parts:
            raise ValueError("Utterances.concat: nothing to concatenate")
        shift, block = 0, []
        for p in parts:
            block.append(p.block + shift)
            shift += len(p.blocks)
        return Utterances(ids=[i for p in parts for i in p.ids], block=torch.cat(block),
                          offsets=torch.cat([p.offsets for p in parts]),
                          lengths=torch.cat([p.lengths for p in parts]),
                          blocks=[b for p in parts for b in p.blocks])

    def select(self, indices: Sequence[int]) -> "Utterances":
        """Utterances ``indices`` (in that order), sharing this split's blocks."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64).reshape(-1))
        return Utterances(ids=[self.ids[int(i)] for i in idx], block=self.block[idx],
                          offsets=self.offsets[idx], lengths=self.lengths[idx], blocks=self.blocks)


# ---------------------------------------------------------------- torch shards (the parts)

def write_shard(path: str | Path, ids: list[str], feats: list[np.ndarray],
                labels: list[np.ndarray]) -> dict:
    """Write one torch shard atomically (the workers' output; format 1's files); returns its
    manifest entry (without the split).

    A shard holds ``n`` utterances back to back: ``ids`` (n,), ``lengths`` int64 (n,),
    ``feats`` float32 (Σ T_i, 41), ``labels`` int16 (Σ T_i,).
    """
    if not (len(ids) == len(feats) == len(labels)):
        raise ValueError("write_shard: ids, feats and labels must have the same length")
    for uid, f, y in zip(ids, feats, labels):
        if f.ndim != 2 or f.shape[1] != STATIC_DIM or len(f) != len(y):
            raise ValueError(f"write_shard: utterance {uid}: feats {f.shape} must be (T, {STATIC_DIM}) "
                             f"with T = len(labels) = {len(y)}")
    if labels and max(int(y.max(initial=0)) for y in labels) > np.iinfo(np.int16).max:
        raise ValueError("write_shard: labels exceed int16")
    lengths = [len(y) for y in labels]
    obj = {
        "format": SHARD_FORMAT,
        "ids": list(ids),
        "lengths": torch.tensor(lengths, dtype=torch.int64),
        "feats": torch.from_numpy(np.concatenate(feats).astype(np.float32) if feats
                                  else np.zeros((0, STATIC_DIM), np.float32)),
        "labels": torch.from_numpy(np.concatenate(labels).astype(np.int16) if labels
                                   else np.zeros(0, np.int16)),
    }
    path = Path(path)
    torch_save(path, obj)
    return {"file": path.name, "sha256": sha256sum(path), "utterances": len(ids),
            "frames": int(sum(lengths))}


def read_shard(path: str | Path) -> Utterances:
    """A torch shard, memory-mapped (``torch.load(mmap=True)``: nothing is read until used)."""
    obj = torch.load(path, weights_only=True, mmap=True)
    if obj.get("format") != SHARD_FORMAT:
        raise DataError(f"{path}: shard format {obj.get('format')} is not {SHARD_FORMAT}; delete "
                        f"{Path(path).parent} to rebuild the cache")
    return Utterances.packed(obj["ids"], obj["lengths"], obj["feats"], obj["labels"])


# ---------------------------------------------------------------- Arrow splits

def arrow_features():
    """The ``datasets.Features`` of a split's rows (see the module docstring)."""
    from datasets import Features, List, Value

    return Features({"id": Value("string"),
                     "feats": List(List(Value("float32"), length=STATIC_DIM)),
                     "labels": List(Value("int16"))})


def _rows_of_shards(paths: list[str]):
    """Rows for ``Dataset.from_generator``: every utterance of the torch shards ``paths``."""
    for path in paths:
        shard = read_shard(path)
        for i in range(len(shard)):
            feats, labels = shard[i]
            yield {"id": shard.ids[i], "feats": feats.numpy(), "labels": labels.numpy()}


@contextlib.contextmanager
def _quiet_datasets():
    """No ``datasets`` progress bars ("Generating...", "Saving...") while bnrnn writes splits."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def write_arrow_split(directory: str | Path, split: str, shards: list[str | Path], fingerprint: str) -> None:
    """``directory/split`` = the utterances of the torch ``shards`` as one ``save_to_disk``
    Dataset, written into a temporary directory and renamed into place. ``fingerprint`` is
    what ``state.json`` records (a random one would make two builds differ)."""
    from datasets import Dataset

    directory = Path(directory)
    final, tmp = directory / split, directory / f".{split}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with _quiet_datasets(), tempfile.TemporaryDirectory(dir=directory, prefix=".hf-cache-") as cache:
        ds = Dataset.from_generator(_rows_of_shards, features=arrow_features(), cache_dir=cache,
                                    gen_kwargs={"paths": [str(p) for p in shards]},
                                    split=split, fingerprint=fingerprint)
        ds.save_to_disk(str(tmp))
        del ds  # closes its memory map of the cache file before the cache is removed
    shutil.rmtree(final, ignore_errors=True)  # a half-renamed earlier attempt
    os.replace(tmp, final)


def arrow_utterances(dataset) -> Utterances:
    """A memory-mapped ``datasets.Dataset`` of :func:`arrow_features` rows -> Utterances whose
    blocks are zero-copy views of its record batches (no frame is read or copied here)."""
    import pyarrow.compute as pc

    table = dataset.data.table
    ids: list[str] = []
    block, offsets, lengths, blocks = [], [], [], []
    for k, batch in enumerate(table.to_batches()):
        feats, labels = batch.column("feats"), batch.column("labels")
        if feats.null_count or labels.null_count or feats.values.null_count:
            raise DataError("the Arrow table has missing feats or labels; delete the cache to rebuild it")
        n_frames = pc.list_value_length(feats).to_numpy(zero_copy_only=False).astype(np.int64)
        if not np.array_equal(n_frames, pc.list_value_length(labels).to_numpy(zero_copy_only=False)):
            raise DataError("the Arrow table has utterances whose feats and labels differ in length; "
                            "delete the cache to rebuild it")
        # flatten() honours the arrays' offsets and slices without copying
        flat = feats.flatten().flatten().to_numpy(zero_copy_only=True).reshape(-1, STATIC_DIM)
        flat_labels = labels.flatten().to_numpy(zero_copy_only=True)
        with _readonly_ok():
            blocks.append((torch.from_numpy(flat), torch.from_numpy(flat_labels)))
        start = np.zeros(len(n_frames), dtype=np.int64)
        np.cumsum(n_frames[:-1], out=start[1:])
        ids.extend(batch.column("id").to_pylist())
        block.append(np.full(len(n_frames), k, dtype=np.int64))
        offsets.append(start)
        lengths.append(n_frames)
    cat = (lambda a: torch.from_numpy(np.concatenate(a)) if a else torch.zeros(0, dtype=torch.int64))
    return Utterances(ids, cat(block), cat(offsets), cat(lengths), blocks)


@contextlib.contextmanager
def _readonly_ok():
    """torch warns that a tensor over a read-only buffer must not be written: bnrnn only reads
    them (the module docstring says so), so the warning would only be noise."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        yield


# ---------------------------------------------------------------- building

def cache_key(config: dict, version: int = FORMAT_VERSION) -> str:
    """A short stable hash of a JSON-able config (sorted keys) and the storage format."""
    blob = json.dumps({"format": version, **config}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def legacy_directory(directory: str | Path, config: dict) -> Path:
    """Where format 1 kept the corpus that ``directory`` (``<prefix>-<key>``) holds in this format."""
    directory = Path(directory)
    prefix = directory.name.rsplit("-", 1)[0]
    return directory.parent / f"{prefix}-{cache_key(config, version=1)}"


@dataclass(frozen=True)
class ShardJob:
    """One shard to build: ``worker(job.payload, out_path)`` writes ``out_path`` with
    :func:`write_shard` and returns its entry, optionally with extra counts (e.g. dropped
    utterances)."""

    split: str
    index: int
    payload: Any

    @property
    def file(self) -> str:
        return f"{self.split}-{self.index:05d}.pt"


def build(directory: str | Path, config: dict, jobs: list[ShardJob],
          worker: Callable[[Any, str], dict], *, workers: int = 1, desc: str = "building",
          extra: dict | None = None, progress: bool = True) -> dict:
    """Build the corpus in ``directory`` unless its manifest exists; returns the manifest.

    ``worker`` must be a module-level function (it runs in spawned processes). Parts finished
    by an interrupted build are kept and reused; a format-1 cache of the same configuration
    (:func:`legacy_directory`) is converted instead of computed again.
    """
    directory = Path(directory)
    if (directory / "manifest.json").is_file():
        shutil.rmtree(directory / PARTS, ignore_errors=True)  # left if a build died after its manifest
        return load_manifest(directory, config)
    directory.mkdir(parents=True, exist_ok=True)
    legacy = legacy_directory(directory, config)
    if (legacy / "manifest.json").is_file() and _legacy_config(legacy) == config:
        log.info("converting the format-1 cache %s into %s (it can be deleted afterwards)",
                 legacy, directory)
        old = json.loads((legacy / "manifest.json").read_text())
        for entry in old["shards"]:
            _check_file(legacy / entry["file"], entry["sha256"], None, legacy)
        entries = old["shards"]
        shard_dir = legacy
        extra = {k: v for k, v in old.items() if k not in ("format", "config", "shards")} | (extra or {})
    else:
        shard_dir = directory / PARTS
        entries = _build_parts(shard_dir, jobs, worker, workers, desc, progress)
    splits = sorted({e["split"] for e in entries})
    key = cache_key(config)
    for split in splits:
        write_arrow_split(directory, split, [shard_dir / e["file"] for e in entries if e["split"] == split],
                          fingerprint=f"bnrnn-{key}-{split}")
    write_json(directory / DATASET_DICT, {"splits": splits})
    manifest = {
        "format": FORMAT_VERSION,
        "config": config,
        "splits": splits,
        "shards": entries,
        "files": _file_entries(directory, splits),
        **(extra or {}),
    }
    write_json(directory / "manifest.json", manifest)  # last: a manifest means everything is there
    shutil.rmtree(directory / PARTS, ignore_errors=True)
    return manifest


def _legacy_config(legacy: Path) -> dict | None:
    manifest = json.loads((legacy / "manifest.json").read_text())
    return manifest.get("config") if manifest.get("format") == 1 else None


def _build_parts(parts: Path, jobs: list[ShardJob], worker, workers: int, desc: str,
                 progress: bool) -> list[dict]:
    """Every job's torch shard in ``parts/`` (``<file>`` and its entry ``<file>.json``, written
    after the shard: a shard without its entry is built again); returns the entries in job order."""
    parts.mkdir(parents=True, exist_ok=True)
    entries: dict[str, dict] = {}
    todo = []
    for job in jobs:
        done = parts / f"{job.file}.json"
        if done.is_file() and (parts / job.file).is_file():
            entries[job.file] = json.loads(done.read_text())
        else:
            todo.append(job)
    bar = _progress(len(jobs), desc, progress)
    bar.update(len(jobs) - len(todo))
    if todo:
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=max(1, workers), mp_context=ctx,
                                    max_tasks_per_child=1) as pool:
            futures = {pool.submit(worker, job.payload, str(parts / job.file)): job for job in todo}
            try:
                for fut in cf.as_completed(futures):
                    job = futures[fut]
                    entries[job.file] = {"split": job.split, **fut.result()}
                    write_json(parts / f"{job.file}.json", entries[job.file])
                    bar.update(1)
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    bar.close()
    return [entries[job.file] for job in jobs]


def _file_entries(directory: Path, splits: list[str]) -> dict[str, dict]:
    """{relative path: {"sha256", "bytes"}} of every file the splits consist of."""
    files = [directory / DATASET_DICT] + [p for s in splits for p in sorted((directory / s).iterdir())]
    return {p.relative_to(directory).as_posix(): {"sha256": sha256sum(p), "bytes": p.stat().st_size}
            for p in files}


# ---------------------------------------------------------------- opening

def load_manifest(directory: str | Path, config: dict | None = None) -> dict:
    directory = Path(directory)
    path = directory / "manifest.json"
    if not path.is_file():
        raise DataError(f"no manifest.json in {directory}: the cache is incomplete; delete the "
                        f"directory to rebuild it")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT_VERSION:
        raise DataError(f"{path} is a format-{manifest.get('format')} cache; this bnrnn reads format "
                        f"{FORMAT_VERSION} (Arrow). Build the corpus through its data module (it "
                        f"converts a format-1 cache of the same configuration), or delete {directory}.")
    if config is not None and manifest.get("config") != config:
        raise DataError(f"{path} was built from a different configuration than requested; delete "
                        f"{directory} to rebuild it")
    return manifest


_VERIFIED: dict[tuple, str] = {}  # (path, size, mtime_ns, inode) -> sha256 checked in this process


def _check_file(path: Path, sha256: str, size: int | None, directory: Path, verify: bool = True) -> None:
    """``path`` exists with ``size`` bytes and (once per process) the sha256 ``sha256``."""
    fix = f"Delete {directory} to rebuild the cache."
    if not path.is_file():
        raise DataError(f"missing cache file {path} listed in {directory / 'manifest.json'}. {fix}")
    st = path.stat()
    if size is not None and st.st_size != size:
        raise DataError(f"cache file {path} has {st.st_size} bytes, the manifest says {size} "
                        f"(truncated or rewritten). {fix}")
    if not verify:
        return
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if _VERIFIED.get(key) == sha256:
        return
    if (actual := sha256sum(path)) != sha256:
        raise DataError(f"checksum mismatch for cache file {path}: expected sha256 {sha256}, "
                        f"got {actual}. {fix}")
    _VERIFIED[key] = sha256


def load_splits(directory: str | Path, manifest: dict, *, verify: bool = True) -> dict[str, Utterances]:
    """Every split of a built corpus, memory-mapped (see the module docstring): sizes always
    checked, sha256 once per process unless ``verify=False``."""
    from datasets import load_from_disk

    directory = Path(directory)
    if manifest.get("format") != FORMAT_VERSION:
        load_manifest(directory)  # raises the format error
    for name, entry in manifest["files"].items():
        _check_file(directory / name, entry["sha256"], entry["bytes"], directory, verify)
    splits = {}
    for split in manifest["splits"]:
        try:
            splits[split] = arrow_utterances(load_from_disk(str(directory / split), keep_in_memory=False))
        except (OSError, ValueError, DataError) as e:  # pyarrow.ArrowInvalid is a ValueError
            raise DataError(f"cache split {directory / split} cannot be read as an Arrow dataset "
                            f"({type(e).__name__}: {e}). Delete {directory} to rebuild the cache.") from e
    return splits


class _NoBar:
    def update(self, n=1): ...
    def close(self): ...


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="shard", dynamic_ncols=True)
