"""Training a population: M models of one shape stepped side by side, each by its own rules.

Every parameter of a population model has a leading member axis M (docs/population.md).
This module holds what makes member m's training exactly its own:

- :class:`PopulationSGD`: SGD with a learning rate, momentum, dampening, weight decay and
  Nesterov flag per member. Member m's update is ``torch.optim.SGD``'s applied to the views
  ``p[m]``, ``p.grad[m]`` (its foreach form, over the views of every member with the same
  hyper-parameters), so it is bit for bit that of an ordinary SGD on member m's parameters
  alone (tested on the CPU)::

      g = ∇θ_m + wd_m θ_m;  b_m ← μ_m b_m + (1 - dampening_m) g  (b_m = g at its first step)
      θ_m ← θ_m - lr_m (g + μ_m b_m if nesterov_m else b_m)

- :class:`PopulationAdam`: Adam with a learning rate, (β1, β2), eps, weight decay, amsgrad flag
  and step count per member: ``torch.optim.Adam``'s own update function applied to the views
  ``p[m]`` and member m's moments, so it too is bit for bit an ordinary Adam on member m alone.
  Both derive from :class:`PopulationOptimizer` (per-member lists in one param group, frozen
  members).

- :func:`clip_grad_norm_per_member`: each member's gradients scaled by
  ``min(1, max_norm_m / (‖∇θ_m‖ + 1e-6))`` with ‖∇θ_m‖ the global 2-norm over member m's
  gradients only (``torch.nn.utils.clip_grad_norm_`` on the member alone), never the
  population's.
- :class:`PopulationSchedule`: a per-member epoch schedule (``bnrnn.schedules``' decay_after or a
  constant rate) setting ``lr_m = lr0_m * factor_m(epochs done)``, as ``LambdaLR`` does.
- :class:`FrozenMembers`: members taken out of training (a diverged member): their parameters,
  buffers (batch-norm statistics) and optimizer state no longer change. Members are independent
  in every computation (docs/population.md), so freezing one leaves the others' arithmetic as it
  was.

Cost: an update is a few foreach launches per group of members with equal hyper-parameters
(Adam on the CPU: torch's single-tensor loop over the views, as torch.optim.Adam runs there);
a clip is one norm launch per member (each member's own reduction, as torch computes it alone).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.optim.adam import adam as torch_adam  # the function torch.optim.Adam.step calls

from bnrnn.schedules import _decay_factor


def population_parameters(params: Iterable[Tensor], population: int,
                          owner: str = "population") -> list[Tensor]:
    """The parameters as a list, each checked to carry the leading member axis M.

    A parameter without it (a scalar, or a first axis that is not M) would be shared by every
    member — its update would mix members — and is refused by name where the module knows it."""
    named = list(params.items()) if isinstance(params, dict) else list(enumerate(params))
    for name, p in named:
        if p.dim() == 0 or p.shape[0] != population:
            raise ValueError(
                f"{owner}: parameter {name} has shape {tuple(p.shape)}, not a leading member axis "
                f"of {population}; every parameter of a population model must be per member "
                f"(build the model with population={population}, or stack M ordinary models)")
    return [p for _, p in named]


def _member_values(name: str, value, population: int, one=None) -> list:
    """``value`` for every member, or the list of exactly M values given. ``one(value)`` says
    whether a list is itself one value (Adam's (β1, β2) pair); by default no list is."""
    if not isinstance(value, (list, tuple)) or (one is not None and one(value)):
        return [value] * population
    if len(value) != population:
        raise ValueError(f"{name}: {len(value)} values for a population of {population}; give "
                         f"one value, or one per member")
    return list(value)


def per_member(name: str, value, population: int, *, allow_none: bool = False) -> list:
    """A hyper-parameter for each member: one value for all, or a list of exactly M."""
    values = _member_values(name, value, population)
    for v in values:
        if v is None and allow_none:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{name}: every member's value must be a finite number >= 0; got {v!r}")
    return values


class PopulationOptimizer(torch.optim.Optimizer):
    """What every population optimizer shares: one param group whose hyper-parameters are lists
    of M (``group[name][m]`` is member m's), the frozen members (:meth:`freeze`, kept in the
    ``state_dict``), and a :meth:`step` that hands each set of live members with equal
    hyper-parameters (``HYPER``) to :meth:`_update` at once."""

    HYPER: tuple[str, ...] = ()

    def __init__(self, params: Iterable[Tensor], population: int, defaults: dict):
        params = population_parameters(
            dict(params) if isinstance(params, dict) else params, population, type(self).__name__)
        super().__init__(params, defaults)
        self.population = population
        self.frozen: set[int] = set()

    def freeze(self, m: int) -> None:
        """Member m is no longer updated (neither its parameters nor its optimizer state)."""
        self.frozen.add(m)

    def live(self) -> list[int]:
        return [m for m in range(self.population) if m not in self.frozen]

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError(f"{type(self).__name__}.step: closures are not supported")
        live = self.live()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            alike: dict[tuple, list[int]] = {}  # members sharing every hyper-parameter
            for m in live:
                # a list (betas read back from a checkpoint) as a tuple: hashable
                key = tuple(tuple(v) if isinstance(v, list) else v
                            for v in (group[k][m] for k in self.HYPER))
                alike.setdefault(key, []).append(m)
            for key, members in alike.items():
                if params:
                    self._update(params, members, *key)

    def _update(self, params: list[Tensor], members: list[int], *hyper) -> None:
        """Update the views ``p[m]`` of ``members``, whose hyper-parameters are ``hyper``."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        return super().state_dict() | {"frozen": sorted(self.frozen)}

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        self.frozen = set(state_dict.pop("frozen", []))
        super().load_state_dict(state_dict)


def per_member_flag(name: str, value, population: int) -> list[bool]:
    """A boolean hyper-parameter for each member: one bool for all, or a list of exactly M."""
    values = _member_values(name, value, population)
    if not all(isinstance(v, bool) for v in values):
        raise ValueError(f"{name}: every member's value must be true or false; got {value!r}")
    return values


class PopulationSGD(PopulationOptimizer):
    """SGD whose hyper-parameters are per member (module doc). ``lr``, ``momentum``,
    ``dampening``, ``weight_decay``: a number for every member or a list of M; ``nesterov``: a
    bool or a list of M. ``frozen`` members are not updated (:meth:`freeze`)."""

    HYPER = ("lr", "momentum", "dampening", "weight_decay", "nesterov")

    def __init__(self, params: Iterable[Tensor], population: int, lr, momentum=0.0,
                 dampening=0.0, weight_decay=0.0, nesterov=False):
        M = population
        defaults = dict(lr=per_member("lr", lr, M), momentum=per_member("momentum", momentum, M),
                        dampening=per_member("dampening", dampening, M),
                        weight_decay=per_member("weight_decay", weight_decay, M),
                        nesterov=per_member_flag("nesterov", nesterov, M))
        for m in range(M):
            if defaults["nesterov"][m] and (defaults["momentum"][m] <= 0 or defaults["dampening"][m] != 0):
                raise ValueError(f"nesterov: member {m} needs momentum > 0 and dampening = 0")
        super().__init__(params, M, defaults)

    def _update(self, params: list[Tensor], members: list[int], lr: float, momentum: float,
                dampening: float, wd: float, nesterov: bool) -> None:
        """torch.optim.SGD's foreach update (``_multi_tensor_sgd``) of the views ``p[m]`` of
        ``members``, who share these hyper-parameters. On the CPU each foreach op is the
        single-tensor op per view (``_single_tensor_sgd``, SGD's CPU default); on CUDA it is the
        fused multi-tensor kernel SGD uses there by default."""
        views = [(p, m) for p in params for m in members]
        weights = [p[m] for p, m in views]
        grads = [p.grad[m] for p, m in views]
        if wd != 0:
            grads = torch._foreach_add(grads, weights, alpha=wd)
        if momentum != 0:
            bufs, going, going_grads = [], [], []
            for (p, m), grad in zip(views, grads):
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                    state["started"] = [False] * self.population  # a host list: no device sync
                buf = state["momentum_buffer"][m]
                if state["started"][m]:
                    going.append(buf)
                    going_grads.append(grad)
                else:
                    buf.copy_(grad)  # torch: buf = grad.clone() at the first step
                bufs.append(buf)
            if going:
                torch._foreach_mul_(going, momentum)
                torch._foreach_add_(going, going_grads, alpha=1 - dampening)
            for p, m in views:
                self.state[p]["started"][m] = True
            if nesterov:
                grads = torch._foreach_add(grads, bufs, alpha=momentum)
            else:
                grads = bufs
        torch._foreach_add_(weights, grads, alpha=-lr)


def per_member_betas(betas, population: int) -> list[tuple[float, float]]:
    """Adam's (β1, β2) for each member: one pair for all, or a list of M pairs; each β in [0, 1)."""
    values = _member_values("betas", betas, population,
                            one=lambda v: not any(isinstance(b, (list, tuple)) for b in v))
    for v in values:
        if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(
                not isinstance(b, bool) and isinstance(b, (int, float)) and 0 <= b < 1 for b in v)):
            raise ValueError(f"betas: every member's value must be a pair of numbers in [0, 1); "
                             f"got {v!r}")
    return [(float(b1), float(b2)) for b1, b2 in values]


def _step_dtype() -> torch.dtype:
    """The dtype torch.optim.Adam keeps its step counter in (``_get_scalar_dtype``)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class PopulationAdam(PopulationOptimizer):
    """Adam whose hyper-parameters are per member. ``lr``, ``eps``, ``weight_decay``: a number
    for every member or a list of M; ``betas``: one (β1, β2) pair or a list of M pairs;
    ``amsgrad``: a bool or a list of M. Each member keeps its own step count t_m (a frozen
    member's stops), and its update is torch.optim.Adam's (L2 weight decay, not AdamW's)::

        g = ∇θ_m + wd_m θ_m;  t_m ← t_m + 1
        a ← β1 a + (1 - β1) g;  v ← β2 v + (1 - β2) g²      (torch's exp_avg, exp_avg_sq)
        θ_m ← θ_m - lr_m / (1 - β1^t_m) · a / (√v / √(1 - β2^t_m) + eps_m)
        (amsgrad: v_max ← max(v_max, v), and v_max in place of v in the step)

    computed by ``torch.optim.adam.adam`` — the function ``torch.optim.Adam.step`` calls, with its
    default implementation (single-tensor on the CPU, foreach on CUDA) — on the views ``p[m]``
    of each member's parameters, gradients and moments. Member m's update is therefore bit for
    bit that of ``torch.optim.Adam`` on member m's parameters alone (tested on the CPU).

    State per parameter p (M, ...): ``step`` (M,) on the CPU, as torch keeps it; ``exp_avg``,
    ``exp_avg_sq`` (and ``max_exp_avg_sq`` once a member uses amsgrad) shaped like p."""

    HYPER = ("lr", "betas", "eps", "weight_decay", "amsgrad")

    def __init__(self, params: Iterable[Tensor], population: int, lr=1e-3, betas=(0.9, 0.999),
                 eps=1e-8, weight_decay=0.0, amsgrad=False):
        M = population
        defaults = dict(lr=per_member("lr", lr, M), betas=per_member_betas(betas, M),
                        eps=per_member("eps", eps, M),
                        weight_decay=per_member("weight_decay", weight_decay, M),
                        amsgrad=per_member_flag("amsgrad", amsgrad, M))
        super().__init__(params, M, defaults)

    def _update(self, params: list[Tensor], members: list[int], lr: float,
                betas: tuple[float, float], eps: float, wd: float, amsgrad: bool) -> None:
        """torch's Adam of the views ``p[m]`` of ``members``, who share these hyper-parameters."""
        for p in params:
            state = self.state[p]
            if not state:  # torch.optim.Adam's lazy initialisation, for every member at once
                state["step"] = torch.zeros(self.population, dtype=_step_dtype())
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if amsgrad and "max_exp_avg_sq" not in state:
                state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        views = [(self.state[p], p, m) for p in params for m in members]
        torch_adam(
            [p[m] for _, p, m in views], [p.grad[m] for _, p, m in views],
            [s["exp_avg"][m] for s, _, m in views], [s["exp_avg_sq"][m] for s, _, m in views],
            [s["max_exp_avg_sq"][m] for s, _, m in views] if amsgrad else [],
            [s["step"][m] for s, _, m in views],  # 0-dim views: torch counts each member's in place
            amsgrad=amsgrad, beta1=betas[0], beta2=betas[1], lr=lr, weight_decay=wd, eps=eps,
            maximize=False)


@torch.no_grad()
def clip_grad_norm_per_member(params: Iterable[Tensor], max_norm, population: int,
                              live: Sequence[int] | None = None) -> Tensor:
    """Clip each member's gradients to its own global 2-norm ``max_norm[m]`` (a number for all,
    a list of M, None entries: not clipped). Returns the members' norms before clipping, (M,)
    float64 on the gradients' device (NaN for a member not computed: frozen, or without
    gradients).

    Member m's clip is ``torch.nn.utils.clip_grad_norm_`` of its gradients alone: the same
    functions on the views ``p.grad[m]``."""
    params = population_parameters(list(params), population, "clip_grad_norm_per_member")
    limits = per_member("clip_grad_norm", max_norm, population, allow_none=True)
    grads = [p.grad for p in params if p.grad is not None]
    # on the gradients' device: filling it reads nothing back (no sync per member)
    norms = torch.full((population,), math.nan, dtype=torch.float64,
                       device=grads[0].device if grads else None)
    if not grads:
        return norms
    for m in range(population) if live is None else live:
        member_grads = [g[m] for g in grads]
        total = nn.utils.get_total_norm(member_grads)
        if limits[m] is not None:  # torch's _clip_grads_with_norm_, on gradients not parameters
            coef = torch.clamp(limits[m] / (total + 1e-6), max=1.0)
            torch._foreach_mul_(member_grads, coef.to(member_grads[0].device))
        norms[m] = total.double()
    return norms


@dataclass(frozen=True)
class MemberSchedule:
    """One member's epoch schedule: ``decay_after`` (bnrnn.schedules) or constant (decay None)."""

    decay: float | None = None
    after_epoch: int = 0
    every: int = 1

    def factor(self, epochs_done: int) -> float:
        if self.decay is None:
            return 1.0
        return _decay_factor(epochs_done, self.decay, self.after_epoch, self.every)


class PopulationSchedule:
    """Per-member learning-rate schedules over a :class:`PopulationOptimizer`, stepped once per epoch:
    ``lr_m = lr0_m * schedule_m.factor(epochs done)`` — ``LambdaLR``'s arithmetic, so member m's
    rates are those of a single run with its schedule."""

    def __init__(self, optimizer: PopulationOptimizer, schedules: Sequence[MemberSchedule]):
        if len(schedules) != optimizer.population:
            raise ValueError(f"PopulationSchedule: {len(schedules)} schedules for a population of "
                             f"{optimizer.population}")
        self.optimizer, self.schedules = optimizer, list(schedules)
        self.base_lrs = [list(g["lr"]) for g in optimizer.param_groups]
        self.last_epoch = 0
        self._apply()

    def step(self) -> None:
        self.last_epoch += 1
        self._apply()

    def _apply(self) -> None:
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = [lr0 * s.factor(self.last_epoch) for lr0, s in zip(base, self.schedules)]

    def state_dict(self) -> dict:
        return {"last_epoch": self.last_epoch, "base_lrs": self.base_lrs}

    def load_state_dict(self, state: dict) -> None:
        self.last_epoch, self.base_lrs = state["last_epoch"], state["base_lrs"]
        self._apply()


class FrozenMembers:
    """The members of a population model taken out of training, with their buffers held fixed.

    :meth:`freeze` records member m's buffers (batch-norm running statistics, step counters) and
    stops its updates in the optimizer; :meth:`restore` — called after every training forward —
    writes the recorded values back, so the member's statistics stay what they were when it was
    frozen. Its parameters are not touched by the optimizer any more."""

    def __init__(self, model: nn.Module, optimizer: PopulationOptimizer):
        self.model, self.optimizer = model, optimizer
        self.population = optimizer.population
        self.saved: dict[int, dict[str, Tensor]] = {}
        # persistent buffers only: a non-persistent one is a constant (e.g. a one-hot table)
        self.names = set(model.state_dict())


    @property
    def members(self) -> set[int]:
        return set(self.saved)

    def _buffers(self) -> dict[str, Tensor]:
        out = {k: b for k, b in self.model.named_buffers() if k in self.names}
        population_parameters(out, self.population, "FrozenMembers (buffers)")
        return out

    def freeze(self, m: int) -> None:
        if m in self.saved:
            return
        self.saved[m] = {k: b[m].clone() for k, b in self._buffers().items()}
        self.optimizer.freeze(m)

    @torch.no_grad()
    def restore(self) -> None:
        if not self.saved:
            return
        buffers = self._buffers()
        for m, saved in self.saved.items():
            for k, value in saved.items():
                buffers[k][m].copy_(value)

    def state_dict(self) -> dict:
        return {"saved": self.saved}

    def load_state_dict(self, state: dict) -> None:
        self.saved = dict(state["saved"])
        for m in self.saved:
            self.optimizer.freeze(m)
