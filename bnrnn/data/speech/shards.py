"""The feature cache shared by both speech corpora: shards of utterances plus a manifest.

Layout of one cached corpus (a directory named ``<corpus>-<key>``, where ``key`` is a hash of
everything that determines its content, so two configurations never share a directory)::

    manifest.json          config, class inventory, one entry per shard (file, sha256, counts)
    train-00000.pt         a shard: torch.save of a dict of tensors (weights_only-loadable)
    ...

A shard holds ``n`` utterances concatenated along time:

    ids      list[str]  (n,)      utterance ids
    lengths  int64      (n,)      frames per utterance
    feats    float32    (N, 41)   static Kaldi features (features.fbank), N = Σ lengths
    labels   int16      (N,)      class per frame

``torch.save`` to a file object writes a zip without timestamps, so equal content gives equal
bytes (the synthetic corpus's determinism test compares these files). Shards are written
atomically by their worker and the manifest last, after every shard exists: a directory with a
manifest is complete, and an interrupted build keeps its finished shards. Loading re-checks
every shard's sha256 against the manifest.

Each shard is built in a fresh worker process (``max_tasks_per_child=1``): libespeak-ng is only
reproducible from a fresh process, and it keeps the parent free of native-library state.
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import logging
import multiprocessing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bnrnn.data.download import DataError, sha256sum
from bnrnn.io import torch_save, write_json

log = logging.getLogger("bnrnn")

FORMAT_VERSION = 1


@dataclass
class Utterances:
    """Utterances of one split over shared frame arrays (see the module docstring).

    ``feats`` (N, 41) float32 and ``labels`` (N,) int16 hold the frames; utterance i is rows
    ``offsets[i] : offsets[i] + lengths[i]`` (``offsets``, ``lengths``: (n,) int64). Selecting
    utterances (:meth:`select`) shares the frame arrays instead of copying them.
    """

    ids: list[str]
    offsets: torch.Tensor
    lengths: torch.Tensor
    feats: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self):
        n = len(self.ids)
        if self.lengths.shape != (n,) or self.offsets.shape != (n,):
            raise ValueError(f"Utterances: offsets and lengths must have shape ({n},); got "
                             f"{tuple(self.offsets.shape)} and {tuple(self.lengths.shape)}")
        if self.feats.shape[0] != self.labels.shape[0]:
            raise ValueError(f"Utterances: feats {tuple(self.feats.shape)} and labels "
                             f"{tuple(self.labels.shape)} must have the same number of frames")
        if n and int((self.offsets + self.lengths).max()) > self.feats.shape[0]:
            raise ValueError("Utterances: an utterance runs past the end of the frame arrays")

    @staticmethod
    def packed(ids: list[str], lengths: torch.Tensor, feats: torch.Tensor,
               labels: torch.Tensor) -> "Utterances":
        """Utterances stored back to back (a shard's layout)."""
        offsets = torch.zeros(len(ids), dtype=torch.int64)
        if len(ids) > 1:
            torch.cumsum(lengths[:-1], 0, out=offsets[1:])
        if int(lengths.sum()) != feats.shape[0]:
            raise ValueError(f"Utterances: Σ lengths = {int(lengths.sum())} but feats has "
                             f"{feats.shape[0]} rows")
        return Utterances(list(ids), offsets, lengths, feats, labels)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (feats (T_i, 41), labels (T_i,)) of utterance i (views, no copy)."""
        a = int(self.offsets[i])
        b = a + int(self.lengths[i])
        return self.feats[a:b], self.labels[a:b]

    @property
    def num_frames(self) -> int:
        return int(self.lengths.sum())

    @staticmethod
    def concat(parts: Sequence["Utterances"]) -> "Utterances":
        """One split from several (copies the frames once into one array)."""
        if not parts:
            raise ValueError("Utterances.concat: nothing to concatenate")
        shift, offsets = 0, []
        for p in parts:
            offsets.append(p.offsets + shift)
            shift += p.feats.shape[0]
        return Utterances(ids=[i for p in parts for i in p.ids], offsets=torch.cat(offsets),
                          lengths=torch.cat([p.lengths for p in parts]),
                          feats=torch.cat([p.feats for p in parts]),
                          labels=torch.cat([p.labels for p in parts]))

    def select(self, indices: Sequence[int]) -> "Utterances":
        """Utterances ``indices`` (in that order), sharing this split's frame arrays."""
        idx = torch.as_tensor(list(indices), dtype=torch.int64)
        return Utterances(ids=[self.ids[int(i)] for i in idx], offsets=self.offsets[idx],
                          lengths=self.lengths[idx], feats=self.feats, labels=self.labels)


def write_shard(path: str | Path, ids: list[str], feats: list[np.ndarray],
                labels: list[np.ndarray]) -> dict:
    """Write one shard atomically; returns its manifest entry (without the split)."""
    if not (len(ids) == len(feats) == len(labels)):
        raise ValueError("write_shard: ids, feats and labels must have the same length")
    for uid, f, y in zip(ids, feats, labels):
        if f.ndim != 2 or len(f) != len(y):
            raise ValueError(f"write_shard: utterance {uid}: feats {f.shape} and labels {y.shape} differ in frames")
    if labels and max(int(y.max(initial=0)) for y in labels) > np.iinfo(np.int16).max:
        raise ValueError("write_shard: labels exceed int16")
    lengths = [len(y) for y in labels]
    dim = feats[0].shape[1] if feats else 0
    obj = {
        "format": FORMAT_VERSION,
        "ids": list(ids),
        "lengths": torch.tensor(lengths, dtype=torch.int64),
        "feats": torch.from_numpy(np.concatenate(feats).astype(np.float32) if feats
                                  else np.zeros((0, dim), np.float32)),
        "labels": torch.from_numpy(np.concatenate(labels).astype(np.int16) if labels
                                   else np.zeros(0, np.int16)),
    }
    path = Path(path)
    torch_save(path, obj)
    return {"file": path.name, "sha256": sha256sum(path), "utterances": len(ids),
            "frames": int(sum(lengths))}


def read_shard(path: str | Path) -> Utterances:
    obj = torch.load(path, weights_only=True, mmap=True)
    if obj.get("format") != FORMAT_VERSION:
        raise DataError(f"{path}: shard format {obj.get('format')} is not {FORMAT_VERSION}; delete "
                        f"{Path(path).parent} to rebuild the cache")
    return Utterances.packed(obj["ids"], obj["lengths"], obj["feats"], obj["labels"])


def cache_key(config: dict) -> str:
    """A short stable hash of a JSON-able config (sorted keys)."""
    blob = json.dumps({"format": FORMAT_VERSION, **config}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


@dataclass(frozen=True)
class ShardJob:
    """One shard to build: ``worker(job.payload, out_path)`` writes ``out_path`` and returns
    ``write_shard``'s entry, optionally with extra counts (e.g. dropped utterances)."""

    split: str
    index: int
    payload: Any

    @property
    def file(self) -> str:
        return f"{self.split}-{self.index:05d}.pt"


def _entry_from_file(path: Path, split: str) -> dict:
    shard = read_shard(path)
    return {"split": split, "file": path.name, "sha256": sha256sum(path), "utterances": len(shard),
            "frames": shard.num_frames}


def build(directory: str | Path, config: dict, jobs: list[ShardJob],
          worker: Callable[[Any, str], dict], *, workers: int = 1, desc: str = "building",
          extra: dict | None = None, progress: bool = True) -> dict:
    """Build the corpus in ``directory`` unless its manifest exists; returns the manifest.

    ``worker`` must be a module-level function (it runs in spawned processes). Shard files
    left by an interrupted build are kept (they were written atomically).
    """
    directory = Path(directory)
    manifest_path = directory / "manifest.json"
    if manifest_path.is_file():
        return load_manifest(directory, config)
    directory.mkdir(parents=True, exist_ok=True)
    entries: dict[str, dict] = {}
    todo = []
    for job in jobs:
        path = directory / job.file
        if path.is_file():
            entries[job.file] = _entry_from_file(path, job.split)
        else:
            todo.append(job)
    bar = _progress(len(jobs), desc, progress)
    bar.update(len(jobs) - len(todo))
    if todo:
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=max(1, workers), mp_context=ctx,
                                    max_tasks_per_child=1) as pool:
            futures = {pool.submit(worker, job.payload, str(directory / job.file)): job for job in todo}
            try:
                for fut in cf.as_completed(futures):
                    job = futures[fut]
                    entries[job.file] = {"split": job.split, **fut.result()}
                    bar.update(1)
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    bar.close()
    manifest = {
        "format": FORMAT_VERSION,
        "config": config,
        "shards": [entries[job.file] for job in jobs],
        **(extra or {}),
    }
    write_json(manifest_path, manifest)  # last: a manifest means every shard is there
    return manifest


def load_manifest(directory: str | Path, config: dict | None = None) -> dict:
    directory = Path(directory)
    path = directory / "manifest.json"
    if not path.is_file():
        raise DataError(f"no manifest.json in {directory}: the cache is incomplete; delete the "
                        f"directory to rebuild it")
    manifest = json.loads(path.read_text())
    if config is not None and manifest.get("config") != config:
        raise DataError(f"{path} was built from a different configuration than requested; delete "
                        f"{directory} to rebuild it")
    return manifest


def load_splits(directory: str | Path, manifest: dict, *, verify: bool = True) -> dict[str, Utterances]:
    """Read every shard of the manifest (sha256-checked) and concatenate them per split."""
    directory = Path(directory)
    parts: dict[str, list[Utterances]] = {}
    for entry in manifest["shards"]:
        path = directory / entry["file"]
        if not path.is_file():
            raise DataError(f"missing cache file {path} listed in {directory / 'manifest.json'}; "
                            f"delete {directory} to rebuild the cache")
        if verify and (actual := sha256sum(path)) != entry["sha256"]:
            raise DataError(f"checksum mismatch for cache file {path}: expected sha256 "
                            f"{entry['sha256']}, got {actual}. Delete {directory} to rebuild it.")
        parts.setdefault(entry["split"], []).append(read_shard(path))
    return {split: Utterances.concat(p) for split, p in parts.items()}


class _NoBar:
    def update(self, n=1): ...
    def close(self): ...


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="shard", dynamic_ncols=True)
