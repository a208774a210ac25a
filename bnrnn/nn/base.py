"""What every normalized recurrent layer shares: parameters and norms of one direction of one
layer (:class:`RecurrentLayer`), and the stack of layers and directions with padding, reversal,
dropout and state handling (:class:`RecurrentStack`). ``NormLSTM`` and ``NormRNN`` only add
their cell's time step.

Shapes are time-major like ``nn.LSTM``: input (T, B, I), output (T, B, D*H), states
(L*D, B, H), ``lengths`` (B,). Gate order i, f, g, o (``nn.LSTM``'s). ``t0`` is the absolute
time step of the input's first frame (a chunk of a stream, the state carried): frame-wise
batch-norm statistics of frame t are those of step t0 + t.

A population (``population=M``, docs/population.md) puts M independent layers side by side:
every parameter and buffer gains a leading axis M, and every activation an axis M just before
the batch: input (T, M, B, I), output (T, M, B, D*H), states (L*D, M, B, H), ``lengths`` (M, B).
The code is the same for both: products go through :func:`member_linear`, reductions over the
batch axis -2, per-member vectors broadcast as (M, 1, F), so ``population=None`` computes what
it always did.
On the fused backend a bidirectional layer runs its two directions as such a population of two
(``RecurrentStack.joint_directions``): equal, to rounding, to one after the other.
"""
from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from bnrnn.nn import fused
from bnrnn.nn.norms import (STATS, SeqBatchNorm, SeqLayerNorm, check_population, leading,
                             member_index, per_member)
from bnrnn.nn.streams import member_dropout
from bnrnn.nn.variants import VARIANTS, Variant, make_norm, without_bias

INITS = ("pytorch", "uniform", "glorot", "orthogonal")
BACKENDS = ("auto", "reference", "native", "fused")


class BadInput(ValueError, RuntimeError):
    """A bad argument of a layer's forward. Both a ValueError (what these layers raised before)
    and a RuntimeError (what ``nn.LSTM`` raises for the same mistakes), so either is caught."""


def _time_axis(T: int, lengths: Tensor) -> Tensor:
    """0 .. T-1 shaped (T, 1, ...) to broadcast against lengths[None] ((1, B) or (1, M, B))."""
    return torch.arange(T, device=lengths.device).view(T, *([1] * lengths.dim()))


def lengths_mask(lengths: Tensor | None, T: int) -> Tensor | None:
    """(B,) lengths -> (T, B) bool, True on real frames ((M, B) -> (T, M, B)); None stays None."""
    if lengths is None:
        return None
    return _time_axis(T, lengths) < lengths.unsqueeze(0)


def reverse_padded(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse each sequence of x (T, B, ...) over its own real frames; padding stays in place
    (x (T, M, B, ...) with lengths (M, B): each member's sequences).

    Sequence b's frame t < lengths[b] goes to lengths[b] - 1 - t, so the reversed sequences all
    start at t = 0 and share the forward direction's mask. Applying it twice is the identity.
    """
    if lengths is None:
        return x.flip(0)
    T, lengths = x.shape[0], lengths.to(x.device)
    t = _time_axis(T, lengths)                           # (T, 1[, 1])
    L = lengths.unsqueeze(0)                             # (1, [M,] B)
    idx = torch.where(t < L, L - 1 - t, t)               # (T, [M,] B)
    return x.gather(0, idx.view(*idx.shape, *([1] * (x.dim() - idx.dim()))).expand_as(x))


def member_linear(x: Tensor, w: Tensor) -> Tensor:
    """x W^T: for a weight w (N, K), of all of x (..., K); for per-member weights w (M, N, K),
    of x (..., M, B, K), member m's rows times its own w[m] -> (..., M, B, N) (one batched GEMM)."""
    if w.dim() == 2:
        return F.linear(x, w)
    xm = x.movedim(-3, 0)                                # (M, ..., B, K)
    y = torch.bmm(xm.reshape(xm.shape[0], -1, xm.shape[-1]), w.transpose(1, 2))
    return y.view(*xm.shape[:-1], w.shape[1]).movedim(0, -3)


def repack(out: Tensor, like: PackedSequence) -> PackedSequence:
    """A padded output (T, B, F), batch in the original order, as a PackedSequence laid out as
    ``like`` (its batch sizes and sorting): what ``nn.LSTM`` returns for a packed input."""
    if like.sorted_indices is not None:
        out = out.index_select(1, like.sorted_indices)
    sizes = like.batch_sizes
    running = torch.arange(out.shape[1])[None, :] < sizes[:, None]  # (T, B): row-major = packed order
    return PackedSequence(out[running.to(out.device)], sizes, like.sorted_indices,
                          like.unsorted_indices)


class RecurrentLayer(nn.Module):
    """One direction of one layer: ``weight_ih`` (G*H, I), ``weight_hh`` (G*H, R), ``bias`` (G*H)
    or None, ``weight_hr`` (P, H) or None (an LSTM's output projection, ``proj_size`` P; R = P with
    one, else H), and the normalization slots ``norm_ih``, ``norm_hh``, ``norm_sum`` (G*H features)
    and, for cells with a memory, ``norm_cell`` (H), G gates per unit (4 for the LSTM, 1 for tanh).
    With ``population=M`` each parameter and buffer has a leading axis M, and activations an
    axis M before the batch (module doc).

    Subclasses set ``gates`` and implement ``reference_recurrence``; the fused recurrence in
    :mod:`bnrnn.nn.fused` computes the same function.
    """

    gates: int = 1
    has_cell: bool = False

    def __init__(self, input_size: int, hidden_size: int, variant: Variant, *, stats: str,
                 max_steps: int, momentum: float | None, eps: float, gamma: float,
                 init: str, init_range: float, forget_bias: float | None,
                 population: int | None = None, proj_size: int = 0, split_bias: bool = False,
                 device=None, dtype=None):
        super().__init__()
        self.input_size, self.hidden_size, self.variant = input_size, hidden_size, variant
        self.init, self.init_range, self.forget_bias = init, init_range, forget_bias
        self.population = population
        G, lead = self.gates * hidden_size, leading(population)
        # drawn in the dtype and on the device asked for, as nn.LSTM's are (not converted after)
        empty = lambda *shape: torch.empty(*lead, *shape, device=device, dtype=dtype)  # noqa: E731
        self.weight_ih = nn.Parameter(empty(G, input_size))
        self.weight_hh = nn.Parameter(empty(G, proj_size or hidden_size))
        # split_bias: nn.LSTM's two copies b = b_ih + b_hh (each gets b's gradient, so an
        # optimizer moves b as nn.LSTM's does); otherwise the one b
        split = variant.bias and split_bias
        self.bias = nn.Parameter(empty(G)) if variant.bias and not split else None
        self.bias_ih = nn.Parameter(empty(G)) if split else None
        self.bias_hh = nn.Parameter(empty(G)) if split else None
        self.weight_hr = nn.Parameter(empty(proj_size, hidden_size)) if proj_size else None
        opts = dict(max_steps=max_steps, momentum=momentum, eps=eps, gamma=gamma,
                    population=population)
        # N_ih sees whole sequences (frame- or sequence-wise); the others act per step (frame-wise).
        self.norm_ih = make_norm(variant.ih, G, stats=stats, **opts)
        self.norm_hh = make_norm(variant.hh, G, stats="frame", **opts)
        self.norm_sum = make_norm(variant.sum, G, stats="frame", **opts)
        if self.has_cell:
            self.norm_cell = make_norm(variant.cell, hidden_size, stats="frame", **opts)
        self.reset_parameters()

    def gate_shift_name(self) -> str | None:
        """The name of the pre-activation's additive term: ``bias`` (b; ``bias_ih`` with
        ``split_bias``, where forget_bias goes), or ``norm_ih.bias`` / ``norm_sum.bias`` (the β
        of the BN that replaces b); None where there is none."""
        for name in ("bias", "bias_ih", "norm_ih.bias", "norm_sum.bias"):
            if self.get_parameter_or_none(name) is not None:
                return name
        return None

    def get_parameter_or_none(self, name: str) -> Tensor | None:
        module, _, attr = name.rpartition(".")
        return getattr(self.get_submodule(module) if module else self, attr, None)

    def gate_shift(self) -> Tensor | None:
        """The additive term of the pre-activation: b, or the β of the BN that replaces it."""
        name = self.gate_shift_name()
        return None if name is None else self.get_parameter_or_none(name)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Weights by ``init``; norms to their papers' values (see ``bnrnn.nn.variants``).

        pytorch: U(±1/sqrt(H)) for weights and bias (``nn.LSTM``'s default);
        uniform: U(±init_range) for weights and bias (Zaremba et al.);
        glorot: each gate's (H, I) and (H, H) matrix Glorot-uniform, bias 0 (Laurent et al.);
        orthogonal: each gate's matrices (semi-)orthogonal, bias 0 (Cooijmans et al.).
        b_ih and b_hh (``split_bias``) as b; the projection ``weight_hr`` as the weights (one
        matrix, not per gate). Then the forget-gate block of the gate shift is set to
        ``forget_bias`` if given (b_hh's to 0). Each member of a population is initialised as a
        layer of its own.
        """
        H = self.hidden_size
        weights = (self.weight_ih, self.weight_hh)
        if self.init in ("pytorch", "uniform"):
            r = 1.0 / math.sqrt(H) if self.init == "pytorch" else self.init_range
            for p in (*weights, self.bias, self.bias_ih, self.bias_hh, self.weight_hr):
                if p is not None:
                    nn.init.uniform_(p, -r, r)
        else:
            fill = nn.init.xavier_uniform_ if self.init == "glorot" else nn.init.orthogonal_
            for w in weights:
                for member in (w,) if self.population is None else w.unbind(0):  # views
                    for g in range(self.gates):
                        fill(member[g * H:(g + 1) * H])
            for b in (self.bias, self.bias_ih, self.bias_hh):
                if b is not None:
                    nn.init.zeros_(b)
            if self.weight_hr is not None:  # one matrix, not per gate
                for member in (self.weight_hr,) if self.population is None else self.weight_hr.unbind(0):
                    fill(member)
        for norm in self.norms():
            if hasattr(norm, "reset_parameters"):
                norm.reset_parameters()
        shift = self.gate_shift()
        if self.forget_bias is not None and shift is not None and self.gates == 4:
            shift[..., H:2 * H] = self.forget_bias
            if self.bias_hh is not None:  # the sum b_ih + b_hh is the forget bias
                self.bias_hh[..., H:2 * H] = 0.0

    def norms(self) -> list[nn.Module]:
        return [self.norm_ih, self.norm_hh, self.norm_sum] + ([self.norm_cell] if self.has_cell else [])

    def input_term(self, x: Tensor, mask: Tensor | None, t0: int = 0) -> Tensor:
        """N_ih(W_x x) + b for all time steps at once: x (T, [M,] B, I) -> (T, [M,] B, G*H);
        x[t] is time step t0 + t."""
        p = self.norm_ih(member_linear(x, self.weight_ih), mask, t0)
        b = self.gate_bias()
        return p + per_member(b) if b is not None else p

    def gate_bias(self) -> Tensor | None:
        """b (G*H), or b_ih + b_hh with ``split_bias``; None where the layer has none."""
        return self.bias if self.bias_ih is None else self.bias_ih + self.bias_hh

    def forward(self, x: Tensor, state: tuple[Tensor, ...], mask: Tensor | None,
                backend: str, t0: int = 0) -> tuple[Tensor, tuple[Tensor, ...]]:
        """x (T, B, I), state tuple of (B, H), mask (T, B) or None -> output (T, B, H), state;
        x[t] is time step t0 + t. With a population: (T, M, B, I), (M, B, H), (T, M, B)."""
        p = self.input_term(x, mask, t0)
        if backend == "fused":
            return fused.recurrence(self, p, state, mask, t0)
        return self.reference_recurrence(p, state, mask, t0)

    def reference_recurrence(self, p: Tensor, state: tuple[Tensor, ...], mask: Tensor | None,
                             t0: int = 0) -> tuple[Tensor, tuple[Tensor, ...]]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        members = "" if self.population is None else f", population={self.population}"
        return f"{self.input_size}, {self.hidden_size}, bias={self.gate_bias() is not None}{members}"


def masked_update(m: Tensor | None, new: Tensor, old: Tensor) -> Tensor:
    """The state after a step: ``new`` on real frames, ``old`` frozen after a sequence's end
    (m ([M,] B) bool, states ([M,] B, H))."""
    return new if m is None else torch.where(m.unsqueeze(-1), new, old)


def masked_output(m: Tensor | None, h: Tensor) -> Tensor:
    """A step's output: h on real frames, zero on padding."""
    return h if m is None else h * m.unsqueeze(-1).to(h.dtype)


class RecurrentStack(nn.Module):
    """``num_layers`` x ``D`` directions of a :class:`RecurrentLayer`, with dropout between layers.

    Subclasses set ``layer_class``, ``norms_allowed``, ``native`` (the ``torch._VF`` function
    of the unnormalized cell: cuDNN on GPU) and the number of state tensors. ``population=M``
    makes every layer a population of M members (module doc).
    """

    layer_class: type[RecurrentLayer]
    norms_allowed: tuple[str, ...]
    n_states: int = 1
    # a population's per-member dropout streams (bnrnn.nn.streams.MemberStreams; not state:
    # a checkpoint saves them apart); None: one mask stream for the whole (T, M, B, F) tensor
    member_streams = None
    # On the fused backend a bidirectional layer runs its two directions as one population of
    # two (2M): one launch per step serves both, as cuDNN does (:meth:`_directions_jointly`).
    # False runs them one after the other (the benchmark's comparison; equal to rounding).
    joint_directions: bool = True

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, *,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, device=None, dtype=None,
                 norm: str = "none", init: str = "pytorch", init_range: float = 0.1,
                 forget_bias: float | None = None, stats: str = "frame",
                 gamma_init: float | None = None, max_steps: int = 100,
                 momentum: float | None = 0.1, eps: float = 1e-5, backend: str = "auto",
                 population: int | None = None, split_bias: bool = False):
        super().__init__()
        name = type(self).__name__
        check_population(name, population)
        _check(name, "norm", norm, self.norms_allowed)
        _check(name, "init", init, INITS)
        _check(name, "stats", stats, STATS)
        _check(name, "backend", backend, BACKENDS)
        if backend == "native" and norm != "none":
            raise ValueError(f"{name}: backend='native' (cuDNN/ATen) exists only for norm='none'; "
                             f"got norm={norm!r}: use backend='auto', 'fused' or 'reference'")
        if backend == "native" and population is not None:
            raise ValueError(f"{name}: backend='native' (cuDNN/ATen) cannot give each member of a "
                             f"population its own weights; use backend='auto' (our fused loop on "
                             f"CUDA, the reference loop on CPU), 'fused' or 'reference'")
        if num_layers < 1 or not 0.0 <= dropout < 1.0:
            raise ValueError(f"{name}: need num_layers >= 1 and 0 <= dropout < 1; got "
                             f"num_layers={num_layers}, dropout={dropout}")
        if population is not None and batch_first:
            raise ValueError(f"{name}: batch_first=True with population={population}: a "
                             f"population's input is time-major (T, M, B, I); transpose it "
                             f"yourself or use batch_first=False")
        if isinstance(proj_size, bool) or not isinstance(proj_size, int) or not 0 <= proj_size < hidden_size:
            raise ValueError(f"{name}: proj_size must be an int in [0, hidden_size) (nn.LSTM's "
                             f"rule); got proj_size={proj_size!r}, hidden_size={hidden_size}")
        if proj_size and backend == "fused":
            raise ValueError(f"{name}: backend='fused' has no kernel for proj_size > 0 (its step "
                             f"kernel writes h = σ(o) tanh(c) unprojected); use backend='auto' "
                             f"(cuDNN for norm='none', else the reference loop) or 'reference'")
        variant = VARIANTS[norm]
        if stats == "sequence" and variant.ih is None:
            raise ValueError(f"{name}: stats='sequence' applies to the input term only, which "
                             f"norm={norm!r} does not normalize (its norms act inside the "
                             f"recurrence, one step at a time): use stats='frame'")
        if split_bias and not (bias and variant.bias):
            why = "bias=False" if not bias else f"norm={norm!r} has no b (the β of its batch norm replaces it)"
            raise ValueError(f"{name}: split_bias=True keeps nn.LSTM's two copies b_ih, b_hh of "
                             f"the bias b, but {why}; drop split_bias")
        if not bias and forget_bias is not None:
            raise ValueError(f"{name}: forget_bias={forget_bias} with bias=False: without a bias "
                             f"(nor the batch-norm shift replacing it) there is no forget-gate "
                             f"bias to set; drop one of them")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.proj_size = bool(bias), bool(batch_first), proj_size
        self.bidirectional, self.dropout, self.norm = bidirectional, dropout, norm
        self.stats, self.backend, self.population = stats, backend, population
        # what else a layer of the same configuration is built from (stack, member)
        self.options = dict(init=init, init_range=init_range, forget_bias=forget_bias,
                            gamma_init=gamma_init, max_steps=max_steps, momentum=momentum, eps=eps,
                            split_bias=split_bias)
        D = 2 if bidirectional else 1
        gamma = variant.gamma if gamma_init is None else gamma_init
        forget = variant.forget_bias if forget_bias is None else forget_bias
        extra = dict(proj_size=proj_size) if proj_size else {}  # the tanh RNN has none
        extra.update(split_bias=split_bias, device=device, dtype=dtype)
        self.layers = nn.ModuleList(
            self.layer_class(input_size if k == 0 else D * (proj_size or hidden_size), hidden_size,
                             without_bias(variant) if not bias else variant,
                             stats=stats, max_steps=max_steps, momentum=momentum, eps=eps,
                             gamma=gamma, init=init, init_range=init_range, forget_bias=forget,
                             population=population, **extra)
            for k in range(num_layers) for _ in range(D))
        if device is not None or dtype is not None:  # nn.LSTM's factory keywords; the norms'
            self.to(device=device, dtype=dtype)     # constants are converted

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """The size of h and of each direction's output: proj_size P where there is one, else H."""
        return self.proj_size or self.hidden_size

    def state_sizes(self) -> tuple[int, ...]:
        """The last size of each state: (P or H, H) for the LSTM, (H,) for the tanh RNN."""
        return (self.output_size, self.hidden_size)[:self.n_states]

    # ------------------------------------------------------------------ populations
    def configuration(self) -> dict:
        """The constructor's arguments that build a layer of this configuration (all but
        ``population``)."""
        return dict(input_size=self.input_size, hidden_size=self.hidden_size,
                    num_layers=self.num_layers, bias=self.bias, batch_first=self.batch_first,
                    bidirectional=self.bidirectional, dropout=self.dropout, norm=self.norm,
                    stats=self.stats, backend=self.backend, **self.options,
                    **({"proj_size": self.proj_size} if self.proj_size else {}))

    @classmethod
    def stack(cls, layers: Sequence["RecurrentStack"]) -> "RecurrentStack":
        """The population of ``layers`` (M ordinary layers of one configuration, dtype and
        device): member m holds a copy of layers[m]'s parameters and statistics, and the
        population's modules take layers[0]'s training modes. Leaves the RNG untouched."""
        name = f"{cls.__name__}.stack"
        layers = list(layers)
        if not layers:
            raise ValueError(f"{name}: needs at least one layer")
        for k, layer in enumerate(layers):
            if type(layer) is not cls:
                raise TypeError(f"{name}: layers[{k}] is a {type(layer).__name__}, not a {cls.__name__}")
            if layer.population is not None:
                raise ValueError(f"{name}: layers[{k}] is already a population of "
                                 f"{layer.population}; stack its members (.member(m)) instead")
        first = layers[0]
        for k, layer in enumerate(layers[1:], 1):
            differ = [f"{key}={value!r} (layers[0]: {first.configuration()[key]!r})"
                      for key, value in layer.configuration().items() if value != first.configuration()[key]]
            differ += [f"{where}={value!r} (layers[0]: {theirs!r})"
                       for where, value, theirs in _settings_differ(layer, first)]
            if differ:
                raise ValueError(f"{name}: every layer needs layers[0]'s configuration; layers[{k}] "
                                 f"has {', '.join(differ)}")
        states = [layer.state_dict() for layer in layers]
        for k, state in enumerate(states[1:], 1):
            for key, value in state.items():
                if (value.dtype, value.device) != (states[0][key].dtype, states[0][key].device):
                    raise ValueError(f"{name}: layers[{k}].{key} is {value.dtype} on {value.device}, "
                                     f"layers[0]'s {states[0][key].dtype} on {states[0][key].device}: "
                                     f"convert them to one dtype and device first")
        population = first._like(population=len(layers))
        population.load_state_dict({key: torch.stack([s[key] for s in states]) for key in states[0]})
        return population

    def member(self, m: int) -> "RecurrentStack":
        """Member m of this population as an ordinary layer: a copy of its parameters,
        statistics, training modes and norm settings (changing one never changes the other)."""
        name = f"{self._name}.member"
        if self.population is None:
            raise ValueError(f"{name}: this {type(self).__name__} is not a population (population=None)")
        m = member_index(name, m, self.population)
        layer = self._like(population=None)
        layer.load_state_dict({key: value[m] for key, value in self.state_dict().items()})
        return layer

    def _like(self, population: int | None, device=None, **changes) -> "RecurrentStack":
        """A new stack of this configuration (but ``changes``), dtype, device (or ``device``),
        modes and norm settings, its parameters left as initialised (without drawing from the
        global RNG)."""
        weight = self.layers[0].weight_ih
        with torch.random.fork_rng(devices=[]):  # initialisation draws are overwritten anyway
            new = type(self)(**{**self.configuration(), **changes}, population=population,
                             **({} if device is None else {"device": device}))
        new = new.to(device or weight.device, weight.dtype)
        for mine, theirs in zip(self.layers, new.layers):
            for slot in _SLOTS:
                module = getattr(mine, slot, None)
                if module is not None and type(module) is not type(getattr(theirs, slot)):
                    # put in the slot after construction (CharLSTM's CellBias): built by itself
                    if not hasattr(module, "like"):
                        raise ValueError(f"{self._name}: the {type(module).__name__} in {slot} has "
                                         f"no population form (a like(population) method)")
                    setattr(theirs, slot, module.like(population).to(device or weight.device))
        _copy_modes(self, new)
        return new

    def reset_parameters(self) -> None:
        for layer in self.layers:
            layer.reset_parameters()

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                + ("" if self.bias else "bias=False, ") + ("batch_first=True, " if self.batch_first else "")
                + (f"proj_size={self.proj_size}, " if self.proj_size else "")
                + f"bidirectional={self.bidirectional}, dropout={self.dropout}, norm={self.norm!r}, "
                f"stats={self.stats!r}, backend={self.backend!r}"
                + ("" if self.population is None else f", population={self.population}"))

    @property
    def _name(self) -> str:
        """The class, and the population size where there is one, for error messages."""
        name = type(self).__name__
        return name if self.population is None else f"{name}(population={self.population})"

    def resolve_backend(self, x: Tensor, *, compiled: bool | None = None) -> str:
        """auto: cuDNN/ATen for ``none`` (not for a population: cuDNN cannot batch different
        weights); our fused kernels where they are compiled for x (CUDA, or ``compiled=True``)
        and have a plan for every layer at x's batch size; else the loop."""
        if self.backend != "auto":
            return self.backend
        if self.norm == "none" and self.population is None:
            return "native"
        if compiled is None:
            compiled = fused.compiled_for(x)
        if compiled and all(fused.refusal_of(layer, x.shape[-2]) is None for layer in self.layers):
            return "fused"
        return "reference"

    # ------------------------------------------------------------------ nn.LSTM / nn.RNN
    torch_class: type[nn.Module]  # nn.LSTM / nn.RNN

    def torch_arguments(self) -> dict:
        """The ``torch_class`` constructor arguments of this configuration."""
        return dict(input_size=self.input_size, hidden_size=self.hidden_size,
                    num_layers=self.num_layers, bias=self.bias, batch_first=self.batch_first,
                    dropout=self.dropout, bidirectional=self.bidirectional)

    def torch_keys(self):
        """(torch_class's key suffix, our layer index) of each layer and direction:
        ``_l{k}`` and ``_l{k}_reverse`` -> ``layers.{k*D + d}``."""
        D = self.num_directions
        return [(f"_l{i // D}" + ("_reverse" if i % D else ""), i) for i in range(len(self.layers))]

    def from_torch_keys(self, state_dict: dict, prefix: str = "") -> None:
        """Rename, in place, ``torch_class`` state-dict keys to ours: ``weight_ih_l{k}[_reverse]``
        and ``weight_hh_...`` (``weight_hr_...``) to ``layers.{i}.weight_ih`` / ``weight_hh``
        (``weight_hr``), and b_ih + b_hh summed into the layer's one gate shift (b, or the β of
        the batch norm replacing it), or kept as they are with ``split_bias``. Keys with
        no counterpart here (biases of a bias=False layer) are left for load_state_dict to report."""
        for sfx, i in self.torch_keys():
            ours = f"{prefix}layers.{i}."
            for w in ("weight_ih", "weight_hh", "weight_hr"):
                if prefix + w + sfx in state_dict:
                    state_dict[ours + w] = state_dict.pop(prefix + w + sfx)
            shift = self.layers[i].gate_shift_name()
            biases = [prefix + b + sfx for b in ("bias_ih", "bias_hh")]
            if self.layers[i].bias_ih is not None:  # split_bias: nn.LSTM's own two
                for b in ("bias_ih", "bias_hh"):
                    if prefix + b + sfx in state_dict:
                        state_dict[ours + b] = state_dict.pop(prefix + b + sfx)
            elif shift is not None and any(b in state_dict for b in biases):
                state_dict[ours + shift] = sum(state_dict.pop(b) for b in biases if b in state_dict)

    def __getattr__(self, name: str):
        """Also ``nn.LSTM``'s parameter names: ``weight_ih_l{k}[_reverse]``, ``weight_hh_...``,
        ``weight_hr_...`` and (with ``split_bias``) ``bias_ih_...`` / ``bias_hh_...`` are the
        layers' own parameters (the same tensors: initialising one initialises ours)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            found = _TORCH_NAME.fullmatch(name)
            if found is None or "layers" not in self._modules:
                raise
        what, k, reverse = found.group(1), int(found.group(2)), bool(found.group(3))
        i = k * self.num_directions + reverse
        if k >= self.num_layers or (reverse and not self.bidirectional):
            raise AttributeError(f"{self._name} has no {name}: num_layers={self.num_layers}, "
                                 f"bidirectional={self.bidirectional}")
        value = getattr(self.layers[i], what, None)
        if value is None:
            why = ("it has no bias (bias=False, or the β of its batch norm replaces b)"
                   if self.layers[i].gate_bias() is None or what not in ("bias_ih", "bias_hh") else
                   f"it has one bias b = b_ih + b_hh (layers.{i}.bias); split_bias=True keeps "
                   f"nn.LSTM's two")
            if what == "weight_hr":
                why = "it has no projection (proj_size=0)"
            raise AttributeError(f"{self._name} has no {name}: {why}")
        return value

    def flatten_parameters(self) -> None:
        """``nn.LSTM``'s call to compact its weights for cuDNN; a no-op here (each layer keeps
        its own weights, which the native backend hands to cuDNN at every call)."""

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Also loads a ``torch_class`` state dict (``nn.LSTM``'s keys, :meth:`from_torch_keys`)."""
        if self.population is None and prefix + "weight_ih_l0" in state_dict:
            self.from_torch_keys(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @classmethod
    def from_torch(cls, module: nn.Module, norm: str = "none", **options) -> "RecurrentStack":
        """A layer of ``module``'s configuration (an ``nn.LSTM`` / ``nn.RNN``), dtype and device
        with its weights; b = b_ih + b_hh (or into the β replacing b). With ``norm='none'`` it
        computes what ``module`` computes; for another norm its norms keep their initial values."""
        if not isinstance(module, cls.torch_class):
            raise TypeError(f"{cls.__name__}.from_torch: expected an {cls.torch_class.__name__}; "
                            f"got {type(module).__name__}")
        weight = module.weight_ih_l0
        args = {k: getattr(module, k) for k in cls.torch_class_arguments}
        new = cls(**args, norm=norm, **options).to(weight.device, weight.dtype)
        converted = dict(module.state_dict())
        new.from_torch_keys(converted)
        new.load_state_dict({**new.state_dict(), **converted})
        return new

    def to_torch(self) -> nn.Module:
        """This layer as a ``torch_class`` (``nn.LSTM`` / ``nn.RNN``) computing the same function:
        b_ih = b, b_hh = 0 (with ``split_bias``, its own b_ih and b_hh). Only ``norm='none'``
        outside a population has one."""
        name = f"{self._name}.to_torch"
        if self.norm != "none" or self.population is not None:
            raise ValueError(f"{name}: {self.torch_class.__name__} has no normalization nor "
                             f"population; only a norm='none' layer with population=None converts "
                             f"(got norm={self.norm!r}, population={self.population})")
        weight = self.layers[0].weight_ih
        module = self.torch_class(**self.torch_arguments()).to(weight.device, weight.dtype)
        with torch.no_grad():
            for sfx, i in self.torch_keys():
                layer = self.layers[i]
                getattr(module, "weight_ih" + sfx).copy_(layer.weight_ih)
                getattr(module, "weight_hh" + sfx).copy_(layer.weight_hh)
                if layer.bias_ih is not None:
                    getattr(module, "bias_ih" + sfx).copy_(layer.bias_ih)
                    getattr(module, "bias_hh" + sfx).copy_(layer.bias_hh)
                elif self.bias:
                    getattr(module, "bias_ih" + sfx).copy_(layer.bias)
                    getattr(module, "bias_hh" + sfx).zero_()
                if layer.weight_hr is not None:
                    getattr(module, "weight_hr" + sfx).copy_(layer.weight_hr)
        module.train(self.training)
        return module

    # ------------------------------------------------------------------ input checks
    def check_forward_args(self, input: Tensor, state: tuple[Tensor, ...] | None,
                           lengths, t0: int = 0, batch_first: bool = False) -> Tensor | None:
        """Refuse a bad ``input``, ``state``, ``lengths`` or ``t0`` before any work, on every backend.

        cuDNN/ATen and the Triton kernels index memory by the shapes they are given, so a
        wrong shape there is a crash or silent garbage rather than an error; the reference
        loop would broadcast some of them. Messages use ``nn.LSTM``'s wording where it has
        one. Returns ``lengths`` as a tensor on the input's device (None stays None); with a
        population, (M, B) (a shared (B,) expanded to every member).

        Cost: shape, dtype and device checks read only metadata. The range check of
        ``lengths`` reads its minimum and maximum in one transfer, and only when ``lengths``
        is given (a CUDA ``lengths`` costs that one sync; a list or CPU tensor none).
        ``batch_first``: the caller gave ``input.transpose(0, 1)``; messages show its shapes.
        """
        name, M = self._name, self.population
        self._check_t0(t0)
        want = self._shape("T", "B", self.input_size, batch_first)
        if not isinstance(input, Tensor):
            raise BadInput(f"{name}: input must be a Tensor {self._shape('T', 'B', 'I', batch_first)}; "
                           f"got {type(input).__name__}")
        given = tuple(input.shape)
        if batch_first and input.dim() >= 2:
            given = (given[1], given[0], *given[2:])
        rank = 3 if M is None else 4
        if input.dim() != rank:
            one = "" if M is not None else " (or 2: one unbatched sequence (T, I))"
            raise BadInput(f"{name}: input must have {rank} dimensions{one}, got {input.dim()} "
                           f"(expected input {want}; got {given})")
        T, B, I = input.shape[0], input.shape[-2], input.shape[-1]
        if M is not None and input.shape[1] != M:
            raise BadInput(f"{name}: input.size(1) must be the population size {M}, one slice "
                           f"per member (expected input {want}; got {given})")
        if I != self.input_size:
            raise BadInput(f"{name}: input.size(-1) must be equal to input_size. Expected "
                           f"{self.input_size}, got {I} (expected input {want}; "
                           f"got {given})")
        if T < 1 or B < 1:
            raise BadInput(f"{name}: input must hold at least one time step and one sequence; "
                           f"got size {self._shape('T', 'B', 'I', batch_first)} = {given}")
        if not input.is_floating_point():
            raise BadInput(f"{name}: input must be a floating-point tensor; got {input.dtype}")
        weight = self.layers[0].weight_ih
        if input.device != weight.device:
            raise BadInput(f"{name}: Input and parameter tensors are not at the same device, found "
                           f"input tensor at {input.device} and parameter tensor at {weight.device}")
        # autocast runs the products in its own dtype, so the dtypes may differ under it (nn.LSTM's rule)
        autocast = torch.is_autocast_enabled(input.device.type)
        if input.dtype != weight.dtype and not autocast:
            raise BadInput(f"{name}: RNN input dtype ({input.dtype}) does not match weight dtype "
                           f"({weight.dtype}). Convert input: input.to({weight.dtype}), or convert "
                           f"model: model.to({input.dtype})")
        if state is not None:
            self._check_state(input, state, autocast)
        lo = T  # the shortest sequence
        if lengths is not None:
            lengths, lo = self._check_lengths(lengths, T, B, batch_first)
        if B == 1:  # only a batch of one can leave a batch norm one value per channel
            for module in self.modules():
                if isinstance(module, SeqBatchNorm):
                    # frame-wise: B values at every step; sequence-wise: the real frames of
                    # each member's one sequence, the fewest of which is lo
                    module.check_values(1 if module.stats == "frame" else lo, input.shape,
                                        where=f"{name}(norm={self.norm!r})")
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=input.device)
        return lengths

    def _shape(self, time, batch, last, batch_first: bool = False) -> str:
        """A shape in words: (T, B, I), or (T, M, B, I) with the population size filled in."""
        lead = () if self.population is None else (self.population,)
        if batch_first:  # checked after the transpose; say what the caller passes
            return f"({batch}, {time}, {last}) (batch_first=True)"
        return f"({', '.join(str(s) for s in (time, *lead, batch, last))})"

    def _check_t0(self, t0) -> None:
        name = self._name
        if isinstance(t0, bool) or not isinstance(t0, int) or t0 < 0:
            raise BadInput(f"{name}: t0 must be a non-negative int, the absolute time step of the "
                           f"input's first frame; got {t0!r}")
        if t0 and self.bidirectional:
            raise BadInput(f"{name}: t0={t0} with bidirectional=True: the reverse direction reads "
                           f"each sequence from its end, which has no absolute time step; run "
                           f"a bidirectional layer on whole sequences (t0=0)")

    def _check_state(self, input: Tensor, state: tuple, autocast: bool) -> None:
        name = self._name
        B = input.shape[-2]
        lead = () if self.population is None else (self.population,)
        shapes = [(self.num_layers * self.num_directions, *lead, B, size) for size in self.state_sizes()]
        expected = shapes[0] if len(set(shapes)) == 1 else f"{shapes[0]} and {shapes[1]}"
        lstm = self.n_states > 1
        if not isinstance(state, (tuple, list)) or len(state) != self.n_states or \
                not all(isinstance(s, Tensor) for s in state):
            got = type(state).__name__ if not isinstance(state, (tuple, list)) else \
                f"({', '.join(type(s).__name__ for s in state)})"
            want = f"a tuple (h0, c0) of Tensors, each {expected}" if lstm else f"a Tensor h0 {expected}"
            if not lstm:  # NormRNN.forward wrapped the user's state in a 1-tuple
                got = type(state[0]).__name__ if len(state) == 1 else got
            raise BadInput(f"{name}: state must be {want}; got {got}")
        rank = input.dim()
        for k, s in enumerate(state):
            which = f"hidden[{k}]" if lstm else "hidden"
            if s.dim() != rank:
                raise BadInput(f"{name}: For batched {rank}-D input, {'hx and cx' if lstm else 'hx'} "
                               f"should also be {rank}-D but got {s.dim()}-D {which} of size {list(s.shape)}")
            if tuple(s.shape) != shapes[k]:
                raise BadInput(f"{name}: Expected {which} size {shapes[k]}, got {list(s.shape)}")
            if s.device != input.device:
                raise BadInput(f"{name}: Input and hidden tensors are not at the same device, found "
                               f"input tensor at {input.device} and {which} tensor at {s.device}")
            if not s.is_floating_point() or (s.dtype != input.dtype and not autocast):
                raise BadInput(f"{name}: {which} dtype ({s.dtype}) must be the input's "
                               f"({input.dtype})")

    def _check_lengths(self, lengths, T: int, B: int, batch_first: bool = False) -> tuple[Tensor, int]:
        """lengths as a tensor ((M, B) for a population) and its minimum."""
        name, M = self._name, self.population
        shapes = f"(B,) = ({B},)" if M is None else \
            f"(M, B) = ({M}, {B}), one per sequence of each member, or (B,) = ({B},), shared"
        if not isinstance(lengths, Tensor):
            try:
                lengths = torch.as_tensor(lengths)
            except (TypeError, ValueError, RuntimeError) as e:
                raise BadInput(f"{name}: lengths must be an integer tensor or a sequence of ints "
                               f"of shape {shapes}; got {type(lengths).__name__} ({e})") from None
        if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
            raise BadInput(f"{name}: lengths must be an integer tensor (torch.int64), not "
                           f"{lengths.dtype}: the number of real frames of each sequence")
        if tuple(lengths.shape) != (B,) and (M is None or tuple(lengths.shape) != (M, B)):
            per = ", one length per sequence" if M is None else ""
            raise BadInput(f"{name}: lengths must be {shapes}{per}; got shape {tuple(lengths.shape)}")
        lo, hi = torch.stack(torch.aminmax(lengths)).tolist()  # one transfer for both bounds
        if lo < 1 or hi > T:
            form = f"(B,)=({B},)" if lengths.dim() == 1 else f"(M, B)=({M}, {B})"
            raise BadInput(f"{name}: lengths must be {form} in [1, {T}] (T = input.size({int(batch_first)}); "
                           f"any order); got {lengths.tolist()}")
        if M is not None and lengths.dim() == 1:
            lengths = lengths.expand(M, B)
        return lengths, lo

    # ------------------------------------------------------------------ forward
    def forward_forms(self, input: Tensor | PackedSequence, hx: tuple[Tensor, ...] | None,
                      lengths, t0: int = 0) -> tuple[Tensor | PackedSequence, tuple[Tensor, ...]]:
        """``nn.LSTM``'s input forms around :meth:`run`: a ``PackedSequence`` (lengths from it;
        the output packed the same way), one unbatched sequence (T, I) with states (L*D, H), or
        with ``batch_first`` input and output (B, T, ·) (states stay (L*D, B, H), as nn.LSTM's)."""
        name = self._name
        if isinstance(input, PackedSequence):
            if lengths is not None:
                raise BadInput(f"{name}: lengths given with a PackedSequence, which carries its "
                               f"own lengths; pass one or the other")
            if self.population is not None:
                raise BadInput(f"{name}: a population takes a padded (T, M, B, I) input with "
                               f"lengths (M, B), not a PackedSequence")
            padded, lengths = nn.utils.rnn.pad_packed_sequence(input)  # original batch order
            out, state = self.run(padded, hx, lengths, t0)
            return repack(out, input), state
        if self.population is None and isinstance(input, Tensor) and input.dim() == 2:
            if lengths is not None:
                raise BadInput(f"{name}: lengths given with an unbatched (T, I) input: one "
                               f"sequence has no padding; drop lengths")
            if hx is not None:
                self._check_unbatched_state(hx)
                hx = tuple(s.unsqueeze(1) for s in hx)
            out, state = self.run(input.unsqueeze(1), hx, None, t0)
            return out.squeeze(1), tuple(s.squeeze(1) for s in state)
        if self.batch_first and isinstance(input, Tensor) and input.dim() == 3:
            out, state = self.run(input.transpose(0, 1), hx, lengths, t0, batch_first=True)
            return out.transpose(0, 1), state
        return self.run(input, hx, lengths, t0, batch_first=self.batch_first)  # refused there

    def step_forms(self, x_t: Tensor, hx: tuple[Tensor, ...] | None,
                   t: int) -> tuple[Tensor, tuple[Tensor, ...]]:
        """One time step of the sequence call, for decoding and online inference: x_t (B, I),
        or (I,) for one unbatched sequence ((M, B, I) in a population), is time step ``t`` ->
        the top layer's output (B, H) ((H,), (M, B, H)) and the states, as ``forward`` gives
        them. Exactly ``forward(x_t[None], hx, t0=t)`` (``batch_first`` does not apply: x_t has
        no time axis), so a loop of steps computes the sequence call; dropout between layers
        draws a new mask at each step. Unidirectional only."""
        name = f"{self._name}.step"
        if self.bidirectional:
            raise BadInput(f"{name}: a bidirectional layer's reverse direction reads the sequence "
                           f"from its end; run the whole sequence through forward()")
        if not isinstance(x_t, Tensor):
            raise BadInput(f"{name}: x_t must be a Tensor (B, I); got {type(x_t).__name__}")
        if self.population is None and x_t.dim() == 1:
            out, state = self.forward_forms(x_t[None], hx, None, t)  # unbatched (1, I)
            return out[0], state
        out, state = self.run(x_t[None], hx, None, t)
        return out[0], state

    def _check_unbatched_state(self, hx) -> None:
        lstm = self.n_states > 1
        if isinstance(hx, (tuple, list)) and len(hx) == self.n_states:
            for k, s in enumerate(hx):
                if isinstance(s, Tensor) and s.dim() != 2:
                    which = f"hidden[{k}]" if lstm else "hidden"
                    raise BadInput(f"{self._name}: For unbatched 2-D input, "
                                   f"{'hx and cx' if lstm else 'hx'} should also be 2-D but got "
                                   f"{s.dim()}-D {which} of size {list(s.shape)}")
            return
        self._check_state(torch.empty(1, 1, self.input_size), hx, False)  # its error

    def run(self, input: Tensor, state: tuple[Tensor, ...] | None, lengths: Tensor | None,
            t0: int = 0, batch_first: bool = False) -> tuple[Tensor, tuple[Tensor, ...]]:
        """input (T, B, I), state: tuple of (L*D, B, H) or None (zeros), lengths (B,) or None,
        t0 the time step of input[0] -> output (T, B, D*H) (zeros at padded steps), final state
        tuple of (L*D, B, H). With a population: (T, M, B, I), (L*D, M, B, H), (M, B) or (B,)
        -> (T, M, B, D*H), (L*D, M, B, H). ``batch_first``: for the messages only
        (:meth:`check_forward_args`)."""
        lengths = self.check_forward_args(input, state, lengths, t0, batch_first)
        T, B = input.shape[0], input.shape[-2]
        D = self.num_directions
        if state is None:
            state = tuple(input.new_zeros(self.num_layers * D, *leading(self.population), B, size)
                          for size in self.state_sizes())
        backend = self.resolve_backend(input)
        if backend == "native":
            return self.native_forward(input, state, lengths)
        mask = lengths_mask(lengths, T)
        x, finals = input, []
        for k in range(self.num_layers):
            layers = self.layers[k * D:(k + 1) * D]
            states = [tuple(s[k * D + d] for s in state) for d in range(D)]
            if D == 2 and backend == "fused" and self.joint_directions \
                    and next(_settings_differ(*layers), None) is None:
                outs, lasts = self._directions_jointly(k, x, states, lengths, mask)
            else:
                outs, lasts = [], []
                for d, layer in enumerate(layers):
                    out, last = layer(x if d == 0 else reverse_padded(x, lengths), states[d], mask,
                                      backend, t0)
                    outs.append(out if d == 0 else reverse_padded(out, lengths))
                    lasts.append(last)
            finals += lasts
            x = outs[0] if D == 1 else torch.cat(outs, dim=-1)
            if self.dropout and k < self.num_layers - 1:
                x = member_dropout(x, self.dropout, self.training, self.member_streams)
        return x, tuple(torch.stack(s) for s in zip(*finals))

    def _directions_jointly(self, k: int, x: Tensor, states: list[tuple[Tensor, ...]],
                            lengths: Tensor | None, mask: Tensor | None):
        """Layer k's two directions in one fused recurrence (``joint_directions``).

        Each direction's parameters and statistics become a member of a population of 2D'
        (D' = M for a population of M, 1 for an ordinary layer; member d·D' + m is direction d
        of member m): the input x (T, [M,] B, I) and its reverse (:func:`reverse_padded`) as
        (T, 2D', B, I), the states (2D', B, H), the mask shared (reversed sequences start at
        t = 0). Returns what the two directions run one after the other return — outputs in
        forward time ((T, [M,] B, H) each), final states — to the rounding of the batched
        products; the statistics updated in training go back into each direction's buffers."""
        fwd, bwd = self.layers[2 * k], self.layers[2 * k + 1]
        single = self.population is None
        M = 1 if single else self.population

        def join(a: Tensor, b: Tensor, axis: int) -> Tensor:
            """The two directions' tensors as members along ``axis`` (added for an ordinary layer)."""
            return torch.cat([a.unsqueeze(axis), b.unsqueeze(axis)] if single else [a, b], axis)

        def split(t: Tensor, axis: int) -> tuple[Tensor, Tensor]:
            a, b = t.split(M, axis)
            return (a.squeeze(axis), b.squeeze(axis)) if single else (a, b)

        joint = self._joint_stack().layers[2 * k]
        _copy_modes(fwd, joint)  # the modes and settings of now (train()/eval() do not reach it)
        fwd_tensors, bwd_tensors = ({**dict(d.named_parameters()), **dict(d.named_buffers())}
                                    for d in (fwd, bwd))
        tensors = {name: join(t, bwd_tensors[name], 0) for name, t in fwd_tensors.items()}
        out, last = torch.func.functional_call(joint, tensors, (
            join(x, reverse_padded(x, lengths), -3),
            tuple(join(a, b, -3) for a, b in zip(*states)),
            None if mask is None else join(mask, mask, -2), "fused"))
        if any(isinstance(m, SeqBatchNorm) and m.training for m in fwd.modules()):
            with torch.no_grad():  # the joined statistics were updated in place: back home
                for name, buffer in fwd.named_buffers():
                    mine, others = split(tensors[name], 0)
                    buffer.copy_(mine)
                    bwd_tensors[name].copy_(others)
        out_f, out_b = split(out, -3)
        lasts = [tuple(split(s, -3)[d] for s in last) for d in (0, 1)]
        return [out_f, reverse_padded(out_b, lengths)], lasts

    def _joint_stack(self) -> "RecurrentStack":
        """The modules :meth:`_directions_jointly` calls with the joined tensors: a stack of this
        configuration with twice the members, time-major (run() has already put a batch-first
        input in that order), on the meta device (no memory; every tensor is swapped in at the
        call). Built once, not a submodule (outside state_dict, parameters and ``to``)."""
        joint = self.__dict__.get("_joint")
        if joint is None:
            joint = self._like(2 * (self.population or 1), device="meta", batch_first=False)
            self.__dict__["_joint"] = joint
        return joint

    native_fn = None  # torch._VF.lstm / torch._VF.rnn_tanh

    def native_forward(self, input: Tensor, state: tuple[Tensor, ...],
                       lengths: Tensor | None) -> tuple[Tensor, tuple[Tensor, ...]]:
        """norm='none' through PyTorch's own RNN kernels (cuDNN on GPU), with our weights."""
        weights = []
        for layer in self.layers:  # nn.LSTM's order: layer-major, direction-minor
            weights += [layer.weight_ih, layer.weight_hh]
            if layer.bias_ih is not None:
                weights += [layer.bias_ih, layer.bias_hh]
            elif self.bias:  # b as b_ih, with b_hh = 0
                weights += [layer.bias, torch.zeros_like(layer.bias)]
            if layer.weight_hr is not None:  # ATen sees the projection from h0's size
                weights.append(layer.weight_hr)
        args = (weights, self.bias, self.num_layers, self.dropout, self.training, self.bidirectional)
        hx = lambda states: states if self.n_states > 1 else states[0]  # noqa: E731 (_VF's form)
        with warnings.catch_warnings():
            # cuDNN copies our per-layer weights into its flat buffer at every call (and warns
            # about it); for these sizes that copy is a small fraction of the step
            warnings.filterwarnings("ignore", message="RNN module weights are not part")
            if lengths is None:
                out, *last = self.native_fn(input, hx(state), *args, False)
                return out, tuple(last)
            packed = nn.utils.rnn.pack_padded_sequence(input, lengths.cpu(), enforce_sorted=False)
            order, unorder = packed.sorted_indices, packed.unsorted_indices
            sorted_state = tuple(s.index_select(1, order) for s in state)
            out, *last = self.native_fn(packed.data, packed.batch_sizes, hx(sorted_state), *args)
        out, _ = nn.utils.rnn.pad_packed_sequence(
            nn.utils.rnn.PackedSequence(out, packed.batch_sizes, order, unorder),
            total_length=input.shape[0])
        return out, tuple(s.index_select(1, unorder) for s in last)


# nn.LSTM's per-layer parameter names
_TORCH_NAME = re.compile(r"(weight_ih|weight_hh|weight_hr|bias_ih|bias_hh)_l(\d+)(_reverse)?")

# what a norm module may have been changed in after construction, and must match in a population
_NORM_SETTINGS = ("eps", "momentum")
_SLOTS = ("norm_ih", "norm_hh", "norm_sum", "norm_cell")  # a layer's normalization slots


def _copy_modes(source: nn.Module, target: nn.Module) -> None:
    """Every training mode and norm setting of ``source`` onto ``target``, a module of the same
    structure."""
    for mine, theirs in zip(source.modules(), target.modules()):
        theirs.training = mine.training
        for attr in _NORM_SETTINGS:
            if isinstance(mine, (SeqBatchNorm, SeqLayerNorm)) and hasattr(mine, attr):
                setattr(theirs, attr, getattr(mine, attr))


def _settings_differ(a: nn.Module, b: nn.Module):
    """(where, a's value, b's value) of each training mode and norm setting in which two stacks
    of one configuration differ."""
    for (where, mine), (_, theirs) in zip(a.named_modules(), b.named_modules()):
        where = where or "self"
        if type(mine) is not type(theirs):  # a slot filled after construction (CellBias)
            yield where, type(mine).__name__, type(theirs).__name__
        if mine.training != theirs.training:
            yield f"{where}.training", mine.training, theirs.training
        if isinstance(mine, (SeqBatchNorm, SeqLayerNorm)):
            for attr in _NORM_SETTINGS:
                ours, others = getattr(mine, attr, None), getattr(theirs, attr, None)
                if ours != others:
                    yield f"{where}.{attr}", ours, others


def _check(cls: str, arg: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{cls}: {arg} must be one of {', '.join(allowed)}; got {value!r}")
