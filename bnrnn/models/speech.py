"""Framewise phone classifier of Laurent et al. §5.1: stacked bidirectional NormLSTMs + softmax."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bnrnn.contracts import StepOutput
from bnrnn.nn import NormLSTM

IGNORE = -100  # label of padded frames (torch.nn.functional.cross_entropy's ignore_index)


class FramewiseClassifier(nn.Module):
    """features (T, B, F) -> normalize -> num_layers x BiLSTM(hidden_size) -> linear -> logits (T, B, C).

    Laurent et al.: 5 bidirectional layers of 250 units, Glorot-uniform weights, zero biases;
    the BN model normalizes the input-to-hidden term of every layer with sequence-wise
    statistics (``norm=bn_input``, ``stats=sequence``, eqs. 18 and 20-21), computed over the
    unpadded frames only. ``norm_options`` go to :class:`bnrnn.nn.NormLSTM` (gamma_init,
    momentum, eps, backend).

    Input normalization: ``(x - feature_mean) / feature_std`` with the training set's global
    statistics, which the data object computes (``data.dims``) and this module keeps as
    buffers, so every checkpoint carries the statistics its weights were trained with.

    Padding is masked everywhere: the input, the recurrence (``lengths``), the BN statistics,
    the loss and the error count. The objective is the frame cross-entropy summed over each
    utterance and averaged over the batch (the per-sequence cost of Theano/Blocks-era code, the
    scaling for which SGD lr 1e-4 is meaningful; a mean over frames would need lr × ~frames per
    utterance); metrics are frame-weighted: FCE = Σ CE / Σ frames (nats), FER = Σ errors / Σ frames.
    """

    selection = "fce"

    def __init__(self, feature_dim: int, num_classes: int, hidden_size: int = 250,
                 num_layers: int = 5, dropout: float = 0.0, norm: str = "none",
                 stats: str = "sequence", norm_options: dict | None = None,
                 feature_mean: Sequence[float] | None = None,
                 feature_std: Sequence[float] | None = None):
        super().__init__()
        # ``stats`` is the statistics of the normalized input term; norm="none" has none to
        # compute, and NormLSTM accepts only the neutral "frame" for it.
        self.rnn = NormLSTM(feature_dim, hidden_size, num_layers=num_layers, bidirectional=True,
                            dropout=dropout, norm=norm, init="glorot",
                            stats=stats if norm != "none" else "frame", **(norm_options or {}))
        self.output = nn.Linear(2 * hidden_size, num_classes)
        mean = torch.zeros(feature_dim) if feature_mean is None else torch.tensor(feature_mean, dtype=torch.float32)
        std = torch.ones(feature_dim) if feature_std is None else torch.tensor(feature_std, dtype=torch.float32)
        if mean.shape != (feature_dim,) or std.shape != (feature_dim,):
            raise ValueError(f"FramewiseClassifier: feature_mean and feature_std must have "
                             f"{feature_dim} values; got {tuple(mean.shape)} and {tuple(std.shape)}")
        if not bool((std > 0).all()):
            raise ValueError("FramewiseClassifier: feature_std must be positive")
        self.register_buffer("feature_mean", mean)
        self.register_buffer("feature_std", std)
        self.chance_loss = math.log(num_classes)  # a uniform prediction's FCE: the divergence line
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """NormLSTM weights per Glorot (``init="glorot"``: xavier-uniform weights, zero biases,
        normalization gains/shifts per their papers); output layer xavier-uniform, zero bias."""
        self.rnn.reset_parameters()
        nn.init.xavier_uniform_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def logits(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """features (T, B, F), lengths (B,) int64 -> logits (T, B, C) (zeros' image at padding)."""
        T = features.shape[0]
        mask = torch.arange(T, device=features.device)[:, None] < lengths.to(features.device)[None, :]  # (T, B)
        x = (features - self.feature_mean) / self.feature_std
        x = x * mask.unsqueeze(-1).to(x.dtype)  # padded frames stay exact zeros
        out, _ = self.rnn(x, lengths=lengths)
        return self.output(out)

    def forward(self, batch, state=None) -> StepOutput:
        """batch: features (T, B, F) float, lengths (B,) int64, labels (T, B) int64 (-100 = pad)."""
        features, lengths, labels = batch
        B = labels.shape[1]
        logits = self.logits(features, lengths).float()
        ce = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE,
                             reduction="sum")
        real = labels != IGNORE
        errors = ((logits.argmax(-1) != labels) & real).sum()
        # the frame count stays a device tensor: reading it here would wait for the GPU every step
        return StepOutput(objective=ce / B, loss_sum=ce.detach(), count=real.sum(),
                          sums={"errors": errors})

    @staticmethod
    def metrics(totals: dict) -> dict[str, float]:
        n = totals["count"]
        out = {"fce": totals["loss_sum"] / n}
        if "errors" in totals:
            out["fer"] = totals["errors"] / n
        return out
