"""What the trainer asks of a data object and a model, and what a model returns per batch.

:class:`bnrnn.engine.Trainer` knows nothing about language models or speech; it talks to any
pair of objects with these shapes (structural types: nothing needs to inherit from them).

Data (:class:`DataModule`)
    ``batches(split, epoch)`` yields batches (tuples of tensors; the trainer moves every tensor
    to the device), ``num_batches(split)`` counts them, ``stateful`` says whether the recurrent
    state is carried from one batch to the next (PTB's BPTT windows) — the trainer then resets
    it at each epoch and before each evaluation. Training batches may depend on ``epoch`` (a
    shuffle seeded per epoch, so a resumed run sees the same order); evaluation asks for epoch 0.

Model (:class:`Model`)
    ``model(batch, state) -> StepOutput``; ``model.metrics(totals) -> dict`` turns the summed
    ``loss_sum``, ``count`` and ``sums`` of a pass into perplexity, bits per character or frame
    error rate; ``model.selection`` names the validation metric that picks the best epoch (lower
    is better); ``model.chance_loss`` (optional) is the per-unit loss of a uniform prediction,
    ln(number of classes): training that stays above it has diverged.

Data → model: ``data.dims``
    ``bnrnn.train`` builds the model as ``instantiate(cfg.model, **data.dims)``, so **a model's
    ``__init__`` must accept every key of its data's ``dims``** (and the model config must not set
    them). Today: PTB words and characters give ``vocab_size``; speech gives ``feature_dim``,
    ``num_classes``, ``feature_mean`` and ``feature_std`` (the training set's input statistics).
    A new dataset therefore names its dims here, in ``DIMS``, and a model that reads it takes them
    as arguments; ``tests/test_experiments.py`` builds every experiment to hold this.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

# data.dims keys per data target: what each dataset passes to its model's constructor
DIMS: dict[str, tuple[str, ...]] = {
    "bnrnn.data.ptb.PTBWordData": ("vocab_size",),
    "bnrnn.data.ptb_char.PTBCharData": ("vocab_size",),
    "bnrnn.data.speech.synthetic.SyntheticSpeechData": (
        "feature_dim", "num_classes", "feature_mean", "feature_std"),
    "bnrnn.data.speech.librispeech.LibriSpeechData": (
        "feature_dim", "num_classes", "feature_mean", "feature_std"),
}


@dataclass
class StepOutput:
    """What a model returns for one batch.

    objective: the scalar to back-propagate (its scaling is the model's convention, e.g. NLL
        summed over time and averaged over the batch for Zaremba's PTB protocol).
    loss_sum: the summed per-unit loss (detached), over ``count`` units (tokens, characters,
        frames); metrics are always unit-weighted: ``loss = Σ loss_sum / Σ count``.
    count: the number of units, an int or an integer tensor on the batch's device (a count
        that only the device knows, e.g. unpadded frames, stays there: the trainer sums it on
        the device and reads it back only at its check points).
    sums: further additive statistics (e.g. ``{"errors": n}`` for frame error rate).
    state: the recurrent state to carry to the next batch (detached), or None.
    """

    objective: Tensor
    loss_sum: Tensor
    count: int | Tensor
    sums: dict[str, Tensor] = field(default_factory=dict)
    state: Any = None


@runtime_checkable
class DataModule(Protocol):
    """Batches of a dataset's splits for the trainer. Optionally a classmethod
    ``local_files(data_cfg) -> (file names, cache key)``: the files it reads from ``data.root``
    (else from ``data.<cache key>``), so that a root without them is refused before any work
    (``bnrnn.config.check_data_files``)."""

    stateful: bool

    @property
    def dims(self) -> Mapping[str, Any]: ...

    def num_batches(self, split: str) -> int: ...

    def batches(self, split: str, epoch: int = 0) -> Iterator[tuple]: ...


@runtime_checkable
class Model(Protocol):
    """An ``nn.Module`` whose ``forward(batch, state)`` returns a :class:`StepOutput`."""

    selection: str

    def __call__(self, batch: tuple, state: Any = None) -> StepOutput: ...

    def metrics(self, totals: Mapping[str, float]) -> dict[str, float]: ...


__all__ = ["DIMS", "DataModule", "Model", "StepOutput"]
