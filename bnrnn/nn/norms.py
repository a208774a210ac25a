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

Population (``population=M``): M independent members side by side. Every parameter and buffer
gains a leading axis M (γ (M, F), running_mean (M, S, F), ...), inputs gain an axis M before the
batch (``forward``: (T, M, B, F), ``step``: (M, B, F), masks (T, M, B) / (M, B)), and member m
normalizes its own rows with its own parameters and statistics, exactly as a module without a
population would. The code is one: statistics reduce over the batch axis (-2) and time (0),
per-member vectors broadcast as (M, 1, F), so ``population=None`` computes what it always did.
"""
from __future__ import annotations

import operator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

STATS = ("frame", "sequence")


def masked_moments(x: Tensor, mask: Tensor | None, dims: tuple[int, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, biased variance and count of ``x`` over ``dims`` (kept), real frames only.

    x: (..., F) in float32 or float64; mask: bool of x's shape without F, or None; dims may be
    negative (counted on x). Returns mean and var shaped like x with ``dims`` of size 1, and the
    count n (same shape, without F). A statistic over zero frames is mean 0, var 0 (n = 0 marks
    it unusable).
    """
    dims = tuple(d % x.dim() for d in dims)
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


def per_member(v: Tensor) -> Tensor:
    """A per-feature vector (F,), or per-member ones (M, F), made to broadcast over the batch
    rows of (..., B, F) or (..., M, B, F): (1, F) or (M, 1, F)."""
    return v.unsqueeze(-2)


def check_population(owner: str, population) -> None:
    """None, or a positive int M (the number of members)."""
    if population is not None and (isinstance(population, bool) or not isinstance(population, int)
                                   or population < 1):
        raise ValueError(f"{owner}: population must be None or a positive int M, the number of "
                         f"members; got {population!r}")


def member_index(owner: str, m, population: int) -> int:
    """m as the index of one of ``population`` members (negative from the end), or a clear error."""
    try:
        m = operator.index(m)
    except TypeError:
        raise TypeError(f"{owner}: m must be an int; got {type(m).__name__}") from None
    if not -population <= m < population:
        raise IndexError(f"{owner}: m must be in [0, {population}) (or negative from the end); got {m}")
    return m


def leading(population: int | None) -> tuple[int, ...]:
    """The leading axes of every parameter and buffer: () or (M,)."""
    return () if population is None else (population,)


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

        population: None, or M: M members, each with its own γ, β and statistics (module doc).

    Parameters: ``weight`` γ (F), ``bias`` β (F) or None. Buffers: ``running_mean``,
    ``running_var`` (S, F) and ``num_batches_tracked`` (S,), S = ``max_steps`` or 1. With a
    population each gains a leading axis M.

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
                 shift: bool = True, population: int | None = None):
        super().__init__()
        check_population("SeqBatchNorm", population)
        if stats not in STATS:
            raise ValueError(f"SeqBatchNorm: stats must be one of {', '.join(STATS)}; got {stats!r}")
        if stats == "frame" and max_steps < 1:
            raise ValueError(f"SeqBatchNorm: max_steps must be >= 1; got {max_steps}")
        self.num_features, self.stats, self.eps = num_features, stats, eps
        self.momentum, self.gamma_init, self.population = momentum, gamma_init, population
        slots, lead = max_steps if stats == "frame" else 1, leading(population)
        self.weight = nn.Parameter(torch.empty(*lead, num_features))
        self.bias = nn.Parameter(torch.empty(*lead, num_features)) if shift else None
        self.register_buffer("running_mean", torch.zeros(*lead, slots, num_features))
        self.register_buffer("running_var", torch.ones(*lead, slots, num_features))
        self.register_buffer("num_batches_tracked", torch.zeros(*lead, slots, dtype=torch.long))
        self.reset_parameters()

    @property
    def max_steps(self) -> int:
        return self.running_mean.shape[-2]

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
                f"momentum={self.momentum}, eps={self.eps}, shift={self.bias is not None}"
                + ("" if self.population is None else f", population={self.population}"))

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

        mean, var: (S', F) biased batch statistics, (M, S', F) with a population; n: (S',)
        frame counts ((M, S')). Steps at or beyond ``max_steps`` and statistics over fewer than
        two frames (of that member) are not folded in.
        """
        keep = min(mean.shape[-2], self.max_steps - t0)
        if keep <= 0:
            return
        sl = slice(t0, t0 + keep)
        dtype = self.running_mean.dtype
        mean, var = mean[..., :keep, :].to(dtype), var[..., :keep, :].to(dtype)
        n = n[..., :keep].to(dtype)
        ok = n > 1
        unbiased = var * (n / (n - 1).clamp_min(1)).unsqueeze(-1)
        tracked = self.num_batches_tracked[..., sl]
        if self.momentum is None:  # cumulative average over the batches seen
            w = (1.0 / (tracked + 1).to(dtype)).unsqueeze(-1)
        else:
            w = torch.full_like(mean[..., :1], self.momentum)
        w = w * ok.unsqueeze(-1)
        self.running_mean[..., sl, :] += w * (mean - self.running_mean[..., sl, :])
        self.running_var[..., sl, :] += w * (unbiased - self.running_var[..., sl, :])
        self.num_batches_tracked[..., sl] += ok.long()

    def _normalize(self, x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        y = (x - mean) * torch.rsqrt(var + self.eps) * per_member(self.weight)
        return y + per_member(self.bias) if self.bias is not None else y

    def _check_rank(self, x: Tensor, rank: int, shape: str) -> None:
        """x has ``rank`` axes (one more with a population, whose axis -3 is M)."""
        members = self.population is not None
        if x.dim() != rank + members or (members and x.shape[-3] != self.population):
            owner = "SeqBatchNorm" + (f"(population={self.population})" if members else "")
            raise ValueError(f"{owner}: expected {shape}; got {tuple(x.shape)}")

    # -------------------------------------------------------------- forward
    def forward(self, x: Tensor, mask: Tensor | None = None, t0: int = 0) -> Tensor:
        """x: (T, B, F), mask: (T, B) bool or None -> (T, B, F); with a population (T, M, B, F)
        and (T, M, B). x[t] is time step t0 + t: its frame-wise population statistic
        (evaluation) and the one it updates (training) are those of step t0 + t. Sequence-wise
        statistics are over the chunk given, whatever t0."""
        self._check_rank(x, 3, "x (T, M, B, F)" if self.population else "x (T, B, F)")
        T, B = x.shape[0], x.shape[-2]
        self.check_values(B if self.stats == "frame" else T * B, x.shape)
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        if self.training:
            dims = (0, -2) if self.stats == "sequence" else (-2,)
            mean, var, n = masked_moments(xf, mask, dims)  # (S', [M,] 1, F), n (S', [M,] 1)
            # into the buffers' layout: ([M,] S', F) and ([M,] S')
            self.update_running(t0 if self.stats == "frame" else 0,
                                *(s.squeeze(-2).movedim(0, -2) for s in (mean, var)),
                                n.squeeze(-1).movedim(0, -1))
        else:
            idx = slice(0, 1) if self.stats == "sequence" else self.slots(t0, T, x.device)
            # ([M,] S', F) -> (S', [M,] 1, F)
            mean, var = (per_member(r[..., idx, :].movedim(-2, 0))
                         for r in (self.running_mean, self.running_var))
        return self._normalize(xf, mean, var).to(x.dtype)

    def step(self, x: Tensor, t: int, mask: Tensor | None = None) -> Tensor:
        """x: (B, F) at time step t, mask: (B,) bool or None -> (B, F); with a population
        (M, B, F) and (M, B). Frame-wise only."""
        if self.stats != "frame":
            raise ValueError("SeqBatchNorm: sequence-wise statistics need the whole sequence; a "
                             "normalization inside the recurrence must use stats='frame'")
        self._check_rank(x, 2, "x (M, B, F)" if self.population else "x (B, F)")
        self.check_values(x.shape[-2], x.shape)
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        if self.training:
            mean, var, n = masked_moments(xf, mask, (-2,))  # ([M,] 1, F), n ([M,] 1)
            self.update_running(t, mean, var, n)
        else:
            s = min(t, self.max_steps - 1)
            mean, var = (per_member(r[..., s, :]) for r in (self.running_mean, self.running_var))
        return self._normalize(xf, mean, var).to(x.dtype)


class SeqLayerNorm(nn.Module):
    """Layer norm over the F features of each frame (Ba et al. 2016): ``α (x - μ) / σ + β``.

    No batch dependence: training and evaluation compute the same function, and ``mask`` is
    accepted only for the common interface.

    Args:
        num_features: F; eps: added to the variance; gamma_init: initial gain α (1);
        shift: learn β (initialised to 0); False fixes it at 0 (the gate LNs of the LN-LSTM,
            where the LSTM bias plays its role);
        population: None, or M: α, β (M, F), inputs (..., M, B, F) (module doc).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, gamma_init: float = 1.0,
                 shift: bool = True, population: int | None = None):
        super().__init__()
        check_population("SeqLayerNorm", population)
        self.num_features, self.eps, self.gamma_init = num_features, eps, gamma_init
        self.population = population
        self.weight = nn.Parameter(torch.empty(*leading(population), num_features))
        self.bias = nn.Parameter(torch.empty(*leading(population), num_features)) if shift else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.weight, self.gamma_init)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, shift={self.bias is not None}"

    def forward(self, x: Tensor, mask: Tensor | None = None, t0: int = 0) -> Tensor:
        if self.population is None:
            return F.layer_norm(x, (self.num_features,), self.weight, self.bias, self.eps)
        # F.layer_norm's affine takes one (F,) gain; members have their own
        y = F.layer_norm(x, (self.num_features,), None, None, self.eps) * per_member(self.weight)
        return y + per_member(self.bias) if self.bias is not None else y

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
