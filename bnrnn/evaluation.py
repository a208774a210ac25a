"""Whole-split evaluation of a language model as one stream, and by evaluation length.

A model with ``score(batch, state, t0) -> StepOutput`` (the char and word LMs) is run over a
split's symbol stream in chunks, in evaluation mode: the recurrent state is carried from chunk
to chunk and ``t0``, the absolute time step of a chunk's first frame, indexes the per-step BN
population statistics (step t uses those of min(t, T_max - 1): Cooijmans et al. §3.1, "we use
the population statistic of time T_max for all time steps beyond it"). Chunking changes the
memory a pass needs, never its result.

- :func:`evaluate_stream`: the split as ``streams`` contiguous pieces (1: the whole split as one
  sequence, batch 1), each from the model's initial state: ``<split>_<metric>_stream``. With
  one stream this is the official code's "proper test" (``penntreebank_evaluate.py`` l. 74-78:
  the test split as one example, batch 1) and the number Cooijmans et al.'s Table 2 reports
  ("Bits-per-character on the Penn Treebank test sequence").
- :func:`evaluate_by_length`: the official evaluation of generalisation to longer sequences
  (``penntreebank_evaluate.py`` l. 65-72, the paper's Figure 3b): the split cut into
  non-overlapping examples of L symbols (``int(len / L)`` of them, the tail dropped:
  ``penntreebank.py`` l. 85, 98-101), each evaluated from a fresh initial state, predicting its
  last L - 1 symbols from its first L - 1 (l. 359); batches of 100 examples (l. 69), which with
  population statistics does not change any prediction.

Metrics are the model's (``model.metrics``) over the summed NLL and counts of every prediction,
so each character weighs the same. (Blocks' evaluator, which the code used, averages the
per-batch means instead; only the last, smaller batch of a split weighs differently.)
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import Tensor, nn

from bnrnn.data.ptb_char import cut_sequences

LENGTH_BATCH = 100  # examples per batch of the official evaluation (penntreebank_evaluate.py l. 69)


def stream_columns(stream: Tensor, streams: int = 1) -> tuple[Tensor, Tensor]:
    """(N,) symbol stream -> (inputs, targets), each (T, streams), T = (N - 1) // streams.

    Column j is the contiguous piece stream[j*T : (j+1)*T] and its targets the same shifted by
    one; with one stream every symbol but the first is predicted. The last (N - 1) mod streams
    predictions are dropped."""
    if streams < 1:
        raise ValueError(f"stream_columns: streams must be >= 1; got {streams}")
    T = (stream.numel() - 1) // streams
    if T < 1:
        raise ValueError(f"stream_columns: a stream of {stream.numel()} symbols cannot be cut into "
                         f"{streams} streams of at least one prediction")
    inputs = stream[: T * streams].view(streams, T).t()
    targets = stream[1: T * streams + 1].view(streams, T).t()
    return inputs, targets


@torch.no_grad()
def score_columns(model: nn.Module, inputs: Tensor, targets: Tensor, *, chunk: int,
                  device: torch.device, autocast: Callable = contextlib.nullcontext) -> dict:
    """Summed ``loss_sum``, ``count`` and ``sums`` of (T, B) streams read in chunks of ``chunk``
    steps, each column from the model's initial state, state and ``t0`` carried across chunks.
    The model is expected in evaluation mode."""
    if chunk < 1:
        raise ValueError(f"score_columns: chunk must be >= 1; got {chunk}")
    state = None
    loss = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.int64, device=device)
    sums: dict[str, Tensor] = {}
    for t0 in range(0, inputs.shape[0], chunk):
        batch = tuple(t[t0: t0 + chunk].to(device) for t in (inputs, targets))
        with autocast():
            out = model.score(batch, state, t0)
        state = out.state
        loss += out.loss_sum.double()
        count += out.count
        for k, v in out.sums.items():
            sums[k] = sums.get(k, 0) + v.double()
    return {"loss_sum": float(loss), "count": int(count)} | {k: float(v) for k, v in sums.items()}


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


def evaluate_stream(model: nn.Module, stream: Tensor, *, streams: int = 1, chunk: int = 1000,
                    device: torch.device | str = "cpu",
                    autocast: Callable = contextlib.nullcontext) -> dict[str, float]:
    """The model's metrics over ``stream`` as ``streams`` contiguous pieces (population
    statistics indexed by absolute time step)."""
    inputs, targets = stream_columns(stream, streams)
    with _eval_mode(model):
        totals = score_columns(model, inputs, targets, chunk=chunk, device=torch.device(device),
                               autocast=autocast)
    return model.metrics(totals)


def evaluate_by_length(model: nn.Module, stream: Tensor, length: int, *,
                       batch_size: int = LENGTH_BATCH, chunk: int = 1000,
                       device: torch.device | str = "cpu",
                       autocast: Callable = contextlib.nullcontext) -> dict[str, float]:
    """The model's metrics over non-overlapping examples of ``length`` symbols of ``stream``,
    each from a fresh initial state (the official by-length evaluation: module docstring)."""
    if length < 2:
        raise ValueError(f"evaluate_by_length: length must be >= 2 (one prediction); got {length}")
    inputs, targets = cut_sequences(stream, length - 1, "disjoint")  # (S, length - 1)
    totals: dict[str, float] = {}
    with _eval_mode(model):
        for start in range(0, inputs.shape[0], batch_size):
            part = score_columns(model, inputs[start: start + batch_size].t(),
                                 targets[start: start + batch_size].t(), chunk=chunk,
                                 device=torch.device(device), autocast=autocast)
            totals = {k: totals.get(k, 0) + v for k, v in part.items()}
    return model.metrics(totals)
