"""Normalization of recurrent pre-activations.

Batch norm with *frame-wise* statistics (one mean/variance per feature and time step, over the
batch: Laurent et al. eq. 19, Cooijmans et al. §3) or *sequence-wise* statistics (over batch and
time, real frames only: Laurent et al. eqs. 20-21), and layer norm (Ba et al. 2016).

Every module normalizes the last dimension's ``num_features`` features and has two entry points:

- ``forward(x, mask=None, t0=0)`` for a whole sequence ``x`` (T, B, F) whose first frame is
  time step ``t0`` (a chunk of a longer stream): the input-to-hidden term ``W_x x`` does not
  depend on the recurrence and is normalized for all time steps at once;
- ``step(x, t, mask=None)`` for time step ``t`` of the recurrence, ``x`` (B, F): ``W_h h``,
  the cell ``c_t`` or the summed pre-activation.

``mask`` ((T, B) or (B,), bool) marks real frames: padding never enters a mean or a variance,
and never updates the population statistics. :class:`NoNorm` has the same interface, so the
recurrent layers never branch on the variant.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

STATS = ("frame", "sequence")


def masked_moments(x: Tensor, mask: Tensor | None, dims: tuple[int, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, biased variance and count of ``x`` over ``dims`` (kept), real frames only.

    x: (..., F) in float32 or float64; mask: bool of x's shape without F, or None.
    Returns mean and var shaped like x with ``dims`` of size 1, and the count n (same shape,
    without F). A statistic over zero frames is mean 0, var 0 (n = 0 marks it unusable).
    """
    if mask is None:
        n = torch.full([1 if d in dims else s for d, s in enumerate(x.shape[:-1])],
                       float(_numel(x, dims)), dtype=x.dtype, device=x.device)
        mean = x.mean(dims, keepdim=True)
        var = (x - mean).square().mean(dims, keepdim=True)
        return mean, var, n
    m = mask.unsqueeze(-1).to(x.dtype)
    n = m.sum(dims, keepdim=True)
    mean = (x * m).sum(dims, keepdim=True) / n.clamp_min(1)
    var = ((x - mean) * m).square().sum(dims, keepdim=True) / n.clamp_min(1)
    return mean, var, n.squeeze(-1)


def _numel(x: Tensor, dims: tuple[int, ...]) -> int:
    out = 1
    for d in dims:
        out *= x.shape[d]
    return out


class NoNorm(nn.Module):
    """The identity with the normalization interface (variant ``none``'s slots)."""

    def forward(self, x: Tensor, mask: Tensor | None = None, t0: int = 0) -> Tensor:
        return x

    def step(self, x: Tensor, t: int, mask: Tensor | None = None) -> Tensor:
        return x


class SeqBatchNorm(nn.Module):
    """Batch norm of a sequence of features, frame-wise or sequence-wise.

    ``y = γ (x - mean) / sqrt(var + eps) + β`` per feature, with batch statistics in training
    and population statistics in evaluation.

    Args:
        num_features: F.
        stats: ``"frame"``: statistics per time step over the batch (eq. 19); population
            statistics kept per step for t < ``max_steps`` and steps t >= ``max_steps`` use those
            of the last kept step (Cooijmans' T_max rule). ``"sequence"``: statistics over batch
            and time, over the real (unpadded) frames only (eqs. 20-21); one population statistic.
        max_steps: T_max, the number of per-step population statistics (frame-wise only).
        momentum: population statistics are ``(1 - momentum) * running + momentum * batch``
            (variance unbiased, as in ``nn.BatchNorm1d``); ``None`` keeps a cumulative average
            (used to re-estimate them after training, :func:`update_population_statistics`).
        eps: added to the variance.
        gamma_init: initial γ (1 in Laurent et al.; 0.1 in Cooijmans et al., whose §4 shows γ = 1
            saturates the gates and kills the gradient flow).
        shift: learn β (initialised to 0); False fixes β = 0 (Cooijmans' gate BNs, where the LSTM
            bias plays its role).

    Parameters: ``weight`` γ (F), ``bias`` β (F) or None. Buffers: ``running_mean``,
    ``running_var`` (S, F) and ``num_batches_tracked`` (S,), S = ``max_steps`` or 1.

    One value per channel: in training, a call is refused as ``nn.BatchNorm1d`` refuses it
    ("Expected more than 1 value per channel when training") when its *largest* statistic has
    a single value, so that mean = x, var = 0 and the output would be β whatever the input.
    Frame-wise, that is B = 1: the first step of a recurrent layer holds every sequence
    (lengths >= 1), so it is the largest statistic. Sequence-wise, it is one real frame in
    all. Later steps of a padded batch with B >= 2 that have one sequence still running are a
    legitimate batch and are not refused: their statistic over one row gives β on that row and
    is not folded into the population statistics (``update_running``). This module judges from
    shapes only (frame-wise B, sequence-wise T·B; it never reads a mask on the host, which on
    a GPU would cost a sync); ``NormLSTM``/``NormRNN`` check the same rule before any work,
    with padding discounted by the ``lengths`` they have already read. The fused kernels
    normalize inside the kernel; their Python side refuses on the same condition first.
    """

    def __init__(self, num_features: int, stats: str = "frame", max_steps: int = 100,
                 momentum: float | None = 0.1, eps: float = 1e-5, gamma_init: float = 1.0,
                 shift: bool = True):
        super().__init__()
        if stats not in STATS:
            raise ValueError(f"SeqBatchNorm: stats must be one of {', '.join(STATS)}; got {stats!r}")
        if stats == "frame" and max_steps < 1:
            raise ValueError(f"SeqBatchNorm: max_steps must be >= 1; got {max_steps}")
        self.num_features, self.stats, self.eps = num_features, stats, eps
        self.momentum, self.gamma_init = momentum, gamma_init
        slots = max_steps if stats == "frame" else 1
        self.weight = nn.Parameter(torch.empty(num_features))
        self.bias = nn.Parameter(torch.empty(num_features)) if shift else None
        self.register_buffer("running_mean", torch.zeros(slots, num_features))
        self.register_buffer("running_var", torch.ones(slots, num_features))
        self.register_buffer("num_batches_tracked", torch.zeros(slots, dtype=torch.long))
        self.reset_parameters()

    @property
    def max_steps(self) -> int:
        return self.running_mean.shape[0]

    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        self.running_var.fill_(1.0)
        self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        nn.init.constant_(self.weight, self.gamma_init)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, stats={self.stats}, max_steps={self.max_steps}, "
                f"momentum={self.momentum}, eps={self.eps}, shift={self.bias is not None}")

    def check_values(self, values: int, size, where: str = "") -> None:
        """Refuse a training call whose largest statistic has ``values`` <= 1 (see above)."""
        if self.training and values <= 1:
            rule = ("frame-wise statistics are over the batch at each time step: training needs "
                    "B >= 2" if self.stats == "frame" else
                    "sequence-wise statistics are over the real frames: training needs two or more")
            raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                             f"{torch.Size(size)} ({where + ': ' if where else ''}SeqBatchNorm {rule}; "
                             f"use eval() for population statistics)")

    # -------------------------------------------------------------- statistics
    def slots(self, t0: int, T: int, device) -> Tensor:
        """Population-statistic index of time steps t0 .. t0+T-1 (the T_max rule)."""
        return torch.arange(t0, t0 + T, device=device).clamp_max(self.max_steps - 1)

    @torch.no_grad()
    def update_running(self, t0: int, mean: Tensor, var: Tensor, n: Tensor) -> None:
        """Fold batch statistics of steps t0 .. t0+S'-1 into the population statistics.

        mean, var: (S', F) biased batch statistics; n: (S',) frame counts. Steps at or beyond
        ``max_steps`` and statistics over fewer than two frames are not folded in.
        """
        keep = min(mean.shape[0], self.max_steps - t0)
        if keep <= 0:
            return
        sl = slice(t0, t0 + keep)
        dtype = self.running_mean.dtype
        mean, var, n = mean[:keep].to(dtype), var[:keep].to(dtype), n[:keep].to(dtype)
        ok = n > 1
        unbiased = var * (n / (n - 1).clamp_min(1)).unsqueeze(-1)
        tracked = self.num_batches_tracked[sl]
        if self.momentum is None:  # cumulative average over the batches seen
            w = (1.0 / (tracked + 1).to(dtype)).unsqueeze(-1)
        else:
            w = torch.full_like(mean[:, :1], self.momentum)
        w = w * ok.unsqueeze(-1)
        self.running_mean[sl] += w * (mean - self.running_mean[sl])
        self.running_var[sl] += w * (unbiased - self.running_var[sl])
        self.num_batches_tracked[sl] += ok.long()

    def _normalize(self, x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        y = (x - mean) * torch.rsqrt(var + self.eps) * self.weight
        return y + self.bias if self.bias is not None else y

    # -------------------------------------------------------------- forward
    def forward(self, x: Tensor, mask: Tensor | None = None, t0: int = 0) -> Tensor:
        """x: (T, B, F), mask: (T, B) bool or None -> (T, B, F). x[t] is time step t0 + t: its
        frame-wise population statistic (evaluation) and the one it updates (training) are those
        of step t0 + t. Sequence-wise statistics are over the chunk given, whatever t0."""
        T = x.shape[0]
        self.check_values(x.shape[1] if self.stats == "frame" else x.shape[0] * x.shape[1], x.shape)
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        if self.training:
            dims = (0, 1) if self.stats == "sequence" else (1,)
            mean, var, n = masked_moments(xf, mask, dims)
            if self.stats == "sequence":
                self.update_running(0, mean.reshape(1, -1), var.reshape(1, -1), n.reshape(1))
            else:
                self.update_running(t0, mean.squeeze(1), var.squeeze(1), n.reshape(T))
        elif self.stats == "sequence":
            mean, var = self.running_mean[0], self.running_var[0]
        else:
            idx = self.slots(t0, T, x.device)
            mean, var = self.running_mean[idx].unsqueeze(1), self.running_var[idx].unsqueeze(1)
        return self._normalize(xf, mean, var).to(x.dtype)

    def step(self, x: Tensor, t: int, mask: Tensor | None = None) -> Tensor:
        """x: (B, F) at time step t, mask: (B,) bool or None -> (B, F). Frame-wise only."""
        if self.stats != "frame":
            raise ValueError("SeqBatchNorm: sequence-wise statistics need the whole sequence; a "
                             "normalization inside the recurrence must use stats='frame'")
        self.check_values(x.shape[0], x.shape)
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        if self.training:
            mean, var, n = masked_moments(xf, mask, (0,))
            self.update_running(t, mean, var, n.reshape(1))
        else:
            s = min(t, self.max_steps - 1)
            mean, var = self.running_mean[s], self.running_var[s]
        return self._normalize(xf, mean, var).to(x.dtype)


class SeqLayerNorm(nn.Module):
    """Layer norm over the F features of each frame (Ba et al. 2016): ``α (x - μ) / σ + β``.

    No batch dependence: training and evaluation compute the same function, and ``mask`` is
    accepted only for the common interface.

    Args:
        num_features: F; eps: added to the variance; gamma_init: initial gain α (1);
        shift: learn β (initialised to 0); False fixes it at 0 (the gate LNs of the LN-LSTM,
            where the LSTM bias plays its role).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, gamma_init: float = 1.0,
                 shift: bool = True):
        super().__init__()
        self.num_features, self.eps, self.gamma_init = num_features, eps, gamma_init
        self.weight = nn.Parameter(torch.empty(num_features))
        self.bias = nn.Parameter(torch.empty(num_features)) if shift else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.weight, self.gamma_init)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, shift={self.bias is not None}"

    def forward(self, x: Tensor, mask: Tensor | None = None, t0: int = 0) -> Tensor:
        return F.layer_norm(x, (self.num_features,), self.weight, self.bias, self.eps)

    def step(self, x: Tensor, t: int, mask: Tensor | None = None) -> Tensor:
        return self.forward(x)


@contextmanager
def batch_statistics(model: nn.Module):
    """Evaluate ``model`` with every :class:`SeqBatchNorm` normalizing by the batch's own
    statistics (training mode), leaving its population statistics untouched.

    What the authors' PTB code did at validation (docs/protocols.md, "Evaluation"); population
    statistics are what a model deployed on one sequence at a time must use. Yields the number
    of batch-norm modules (0: the model has none, and the context changes nothing).
    """
    bns = [m for m in model.modules() if isinstance(m, SeqBatchNorm)]
    saved = [{k: v.clone() for k, v in bn.named_buffers()} for bn in bns]
    modes = [bn.training for bn in bns]
    try:
        for bn in bns:
            bn.train()
        yield len(bns)
    finally:
        with torch.no_grad():
            for bn, buffers, mode in zip(bns, saved, modes):
                for k, v in bn.named_buffers():
                    v.copy_(buffers[k])
                bn.train(mode)


@torch.no_grad()
def update_population_statistics(model: nn.Module, batches, forward) -> int:
    """Re-estimate the population statistics of every :class:`SeqBatchNorm` in ``model`` by one
    pass over ``batches`` (Cooijmans et al.'s evaluation, ``penntreebank_evaluate.py``).

    The running statistics are reset and replaced by the cumulative average of the batch
    statistics seen while ``forward(model, batch)`` runs each batch with the BNs in training
    mode and everything else (dropout) in evaluation mode. Momentum and modes are restored.
    Returns the number of batches used.
    """
    bns = [m for m in model.modules() if isinstance(m, SeqBatchNorm)]
    if not bns:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = [bn.momentum for bn in bns]
    try:
        model.eval()
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
        n = 0
        for batch in batches:
            forward(model, batch)
            n += 1
    finally:
        for bn, mom in zip(bns, momenta):
            bn.momentum = mom
        for m, mode in modes.items():
            m.training = mode
    return n
