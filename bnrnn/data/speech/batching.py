"""Length-bucketed, padded, time-major batches of utterances and the engine's data protocol.

Shared by both corpora (:class:`~bnrnn.data.speech.librispeech.LibriSpeechData`,
:class:`~bnrnn.data.speech.synthetic.SyntheticSpeechData`). A batch is

    features  (T, B, 123) float32   static features + Δ + ΔΔ, zeros at padded frames
    lengths   (B,)        int64     real frames per utterance (T = max length, rounded up to a
                                    multiple of ``pad_multiple`` where one is set)
    labels    (T, B)      int64     class per frame, -100 (``IGNORE``) at padded frames

Features are *not* normalized here: the global mean and standard deviation of the training
frames (:attr:`SpeechData.dims`) are given to the model, which keeps them as buffers, so they
are saved in every checkpoint and evaluation always uses the statistics of the training run.

Bucketing (training): each epoch the training utterances are shuffled with a generator seeded
by ``(seed, epoch)``, cut into pools of ``sort_pool`` batches, each pool sorted by length and
cut into batches, and the batch order shuffled again: batches hold utterances of similar
length (little padding) but differ from epoch to epoch, and a resumed run sees the same
batches as an uninterrupted one. Evaluation batches are fixed: utterances sorted by length.

Fixed batch lengths (``pad_multiple``): the fused recurrence replays a CUDA graph per input
shape it has seen, so batches of every possible length would mostly run eagerly. Rounding T up
to a multiple of ``pad_multiple`` leaves at most ``ceil(max_frames / pad_multiple)`` lengths,
each replayed from its graph after its second batch. The extra frames are padding: masked in
the recurrence, the loss and every statistic, so the numbers do not change.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from bnrnn.data.speech.features import FEATURE_DIM, STATIC_DIM, add_deltas
from bnrnn.data.speech.shards import Utterances

log = logging.getLogger("bnrnn")

IGNORE = -100  # label of padded frames: torch.nn.functional.cross_entropy's ignore_index


def bucket_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                   sort_pool: int = 50) -> list[np.ndarray]:
    """Indices of utterances grouped into batches of similar length, in a random order.

    Every utterance appears exactly once; the last batch of each pool may be smaller.
    """
    order = rng.permutation(len(lengths))
    pool = max(1, sort_pool) * batch_size
    batches = []
    for start in range(0, len(order), pool):
        chunk = order[start:start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Deterministic evaluation batches: utterances sorted by length, then cut."""
    order = np.argsort(lengths, kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def collate(items: list[tuple[torch.Tensor, torch.Tensor]], pad_multiple: int | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[(static (T_i, 41), labels (T_i,))] -> features (T, B, 123), lengths (B,), labels (T, B);
    T is the longest utterance, rounded up to a multiple of ``pad_multiple`` if given."""
    lengths = torch.tensor([len(y) for _, y in items], dtype=torch.int64)
    T, B = int(lengths.max()), len(items)
    if pad_multiple:
        T = -(-T // pad_multiple) * pad_multiple
    features = torch.zeros(T, B, FEATURE_DIM, dtype=torch.float32)
    labels = torch.full((T, B), IGNORE, dtype=torch.int64)
    for b, (static, y) in enumerate(items):
        n = len(y)
        features[:n, b] = torch.from_numpy(add_deltas(static.numpy()))
        labels[:n, b] = y.to(torch.int64)
    return features, lengths, labels


def feature_statistics(utts: Utterances) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (123,) of the 123-dim features over every frame of ``utts``
    (float64 sums; the std is floored at 1e-5 so a constant dimension stays finite)."""
    total = np.zeros(FEATURE_DIM)
    total_sq = np.zeros(FEATURE_DIM)
    for i in range(len(utts)):
        x = add_deltas(utts[i][0].numpy()).astype(np.float64)
        total += x.sum(0)
        total_sq += (x * x).sum(0)
    n = utts.num_frames
    mean = total / n
    var = np.maximum(total_sq / n - mean * mean, 0.0)
    return mean, np.maximum(np.sqrt(var), 1e-5)


class SpeechData:
    """Framewise speech data for the trainer (a :class:`bnrnn.contracts.DataModule`,
    ``stateful = False``).

    Args:
        splits: split name -> :class:`Utterances` (static features and labels); must hold
            ``train``; usually ``dev`` and ``test`` too.
        num_classes: number of label classes (labels lie in ``[0, num_classes)``).
        batch_size: training utterances per batch (24 in Laurent et al.).
        eval_batch_size: utterances per evaluation batch.
        max_frames: training utterances longer than this are dropped (1300 in Laurent et al.,
            "because of memory issues"; the paper drops them from the training set only).
        seed: seeds the per-epoch bucketing shuffle.
        sort_pool: batches per length-sorting pool (see the module docstring).
        limit_batches: use only the first N batches of every split (smoke tests, CI).
        pad_multiple: round every batch's T up to a multiple of this (module docstring: fixed
            batch lengths, so CUDA graphs replay); None pads to the longest utterance only.
    """

    stateful = False

    def __init__(self, splits: dict[str, Utterances], num_classes: int, *, batch_size: int = 24,
                 eval_batch_size: int = 24, max_frames: int | None = 1300, seed: int = 0,
                 sort_pool: int = 50, limit_batches: int | None = None,
                 pad_multiple: int | None = None):
        if "train" not in splits:
            raise ValueError(f"SpeechData: a 'train' split is required; got {sorted(splits)}")
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError(f"SpeechData: batch sizes must be >= 1; got batch_size={batch_size}, "
                             f"eval_batch_size={eval_batch_size}")
        self.num_classes = num_classes
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        if pad_multiple is not None and pad_multiple < 1:
            raise ValueError(f"SpeechData: pad_multiple must be >= 1 or None; got {pad_multiple}")
        self.seed, self.sort_pool, self.limit = seed, sort_pool, limit_batches
        self.pad_multiple = pad_multiple
        train = splits["train"]
        if max_frames:
            keep = [i for i in range(len(train)) if int(train.lengths[i]) <= max_frames]
            dropped = len(train) - len(keep)
            log.info("speech data: dropped %d of %d training utterances longer than %d frames "
                     "(%.1f%%)", dropped, len(train), max_frames, 100 * dropped / max(1, len(train)))
            self.dropped_long = dropped
            train = train.select(keep)
        else:
            self.dropped_long = 0
        self.splits = {**splits, "train": train}
        for name, utts in self.splits.items():
            if len(utts) == 0:
                raise ValueError(f"SpeechData: split {name!r} has no utterances")
            low, top = utts.label_range()
            if top >= num_classes or low < 0:
                raise ValueError(f"SpeechData: split {name!r} has labels outside [0, {num_classes})")
            log.info("speech data: %s: %d utterances, %d frames (%.2f h)", name, len(utts),
                     utts.num_frames, utts.num_frames / 360000)
        self.mean, self.std = feature_statistics(train)
        self._lengths = {s: u.lengths.numpy() for s, u in self.splits.items()}
        self._eval_plan = {s: sorted_batches(self._lengths[s], eval_batch_size)
                           for s in self.splits if s != "train"}

    @property
    def dims(self) -> dict:
        """What the model needs: feature and class counts and the training-set feature
        statistics (float lists of length 123) for its input normalization."""
        return {"feature_dim": FEATURE_DIM, "num_classes": self.num_classes,
                "feature_mean": [float(v) for v in self.mean],
                "feature_std": [float(v) for v in self.std]}

    def _split(self, split: str) -> Utterances:
        if split not in self.splits:
            raise KeyError(f"SpeechData: no split {split!r}; this corpus has {sorted(self.splits)}")
        return self.splits[split]

    def plan(self, split: str, epoch: int = 0) -> list[np.ndarray]:
        """The utterance indices of every batch of ``split`` for ``epoch``."""
        self._split(split)
        if split == "train":
            rng = np.random.default_rng([self.seed, epoch])
            plan = bucket_batches(self._lengths["train"], self.batch_size, rng, self.sort_pool)
        else:
            plan = self._eval_plan[split]
        return plan[: self.limit] if self.limit else plan

    def num_batches(self, split: str) -> int:
        return len(self.plan(split, 0))

    def batches(self, split: str, epoch: int = 0):
        """Yields (features (T, B, 123) float32, lengths (B,) int64, labels (T, B) int64)."""
        utts = self._split(split)
        for idx in self.plan(split, epoch):
            yield collate([utts[int(i)] for i in idx], self.pad_multiple)


__all__ = ["IGNORE", "SpeechData", "bucket_batches", "collate", "feature_statistics",
           "sorted_batches", "STATIC_DIM"]
