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

Cost: an update is a few foreach launches per group of members with equal hyper-parameters;
a clip is one norm launch per member (each member's own reduction, as torch computes it alone).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

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


def per_member(name: str, value, population: int, *, allow_none: bool = False) -> list:
    """A hyper-parameter for each member: one value for all, or a list of exactly M."""
    values = list(value) if isinstance(value, (list, tuple)) else [value] * population
    if len(values) != population:
        raise ValueError(f"{name}: {len(values)} values for a population of {population}; give "
                         f"one value, or one per member")
    for v in values:
        if v is None and allow_none:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{name}: every member's value must be a finite number >= 0; got {v!r}")
    return values


class PopulationSGD(torch.optim.Optimizer):
    """SGD whose hyper-parameters are per member (module doc). ``lr``, ``momentum``,
    ``dampening``, ``weight_decay``: a number for every member or a list of M; ``nesterov``: a
    bool or a list of M. ``frozen`` members are not updated (:meth:`freeze`)."""

    def __init__(self, params: Iterable[Tensor], population: int, lr, momentum=0.0,
                 dampening=0.0, weight_decay=0.0, nesterov=False):
        M = population
        params = population_parameters(
            dict(params) if isinstance(params, dict) else params, M, "PopulationSGD")
        nesterov = list(nesterov) if isinstance(nesterov, (list, tuple)) else [nesterov] * M
        if len(nesterov) != M:
            raise ValueError(f"nesterov: {len(nesterov)} values for a population of {M}")
        defaults = dict(lr=per_member("lr", lr, M), momentum=per_member("momentum", momentum, M),
                        dampening=per_member("dampening", dampening, M),
                        weight_decay=per_member("weight_decay", weight_decay, M),
                        nesterov=[bool(n) for n in nesterov])
        for m in range(M):
            if defaults["nesterov"][m] and (defaults["momentum"][m] <= 0 or defaults["dampening"][m] != 0):
                raise ValueError(f"nesterov: member {m} needs momentum > 0 and dampening = 0")
        super().__init__(params, defaults)
        self.population = M
        self.frozen: set[int] = set()

    def freeze(self, m: int) -> None:
        """Member m is no longer updated (and its momentum buffer no longer changes)."""
        self.frozen.add(m)

    def live(self) -> list[int]:
        return [m for m in range(self.population) if m not in self.frozen]

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("PopulationSGD.step: closures are not supported")
        live = self.live()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            alike: dict[tuple, list[int]] = {}  # members sharing every hyper-parameter
            for m in live:
                key = tuple(group[k][m] for k in ("lr", "momentum", "dampening", "weight_decay", "nesterov"))
                alike.setdefault(key, []).append(m)
            for (lr, momentum, dampening, wd, nesterov), members in alike.items():
                self._update(params, members, lr, momentum, dampening, wd, nesterov)

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

    def state_dict(self) -> dict:
        return super().state_dict() | {"frozen": sorted(self.frozen)}

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        self.frozen = set(state_dict.pop("frozen", []))
        super().load_state_dict(state_dict)


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
    """Per-member learning-rate schedules over a :class:`PopulationSGD`, stepped once per epoch:
    ``lr_m = lr0_m * schedule_m.factor(epochs done)`` — ``LambdaLR``'s arithmetic, so member m's
    rates are those of a single run with its schedule."""

    def __init__(self, optimizer: PopulationSGD, schedules: Sequence[MemberSchedule]):
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

    def __init__(self, model: nn.Module, optimizer: PopulationSGD):
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
