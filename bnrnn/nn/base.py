"""What every normalized recurrent layer shares: parameters and norms of one direction of one
layer (:class:`RecurrentLayer`), and the stack of layers and directions with padding, reversal,
dropout and state handling (:class:`RecurrentStack`). ``NormLSTM`` and ``NormRNN`` only add
their cell's time step.

Shapes are time-major like ``nn.LSTM``: input (T, B, I), output (T, B, D*H), states
(L*D, B, H), ``lengths`` (B,). Gate order i, f, g, o (``nn.LSTM``'s). ``t0`` is the absolute
time step of the input's first frame (a chunk of a stream, the state carried): frame-wise
batch-norm statistics of frame t are those of step t0 + t.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnrnn.nn import fused
from bnrnn.nn.norms import STATS, SeqBatchNorm
from bnrnn.nn.variants import VARIANTS, Variant, make_norm

INITS = ("pytorch", "uniform", "glorot", "orthogonal")
BACKENDS = ("auto", "reference", "native", "fused")


class BadInput(ValueError, RuntimeError):
    """A bad argument of a layer's forward. Both a ValueError (what these layers raised before)
    and a RuntimeError (what ``nn.LSTM`` raises for the same mistakes), so either is caught."""


def lengths_mask(lengths: Tensor | None, T: int) -> Tensor | None:
    """(B,) lengths -> (T, B) bool, True on real frames; None stays None."""
    if lengths is None:
        return None
    return torch.arange(T, device=lengths.device).unsqueeze(1) < lengths.unsqueeze(0)


def reverse_padded(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse each sequence of x (T, B, ...) over its own real frames; padding stays in place.

    Sequence b's frame t < lengths[b] goes to lengths[b] - 1 - t, so the reversed sequences all
    start at t = 0 and share the forward direction's mask. Applying it twice is the identity.
    """
    if lengths is None:
        return x.flip(0)
    T = x.shape[0]
    t = torch.arange(T, device=x.device).unsqueeze(1)  # (T, 1)
    L = lengths.to(x.device).unsqueeze(0)                # (1, B)
    idx = torch.where(t < L, L - 1 - t, t)               # (T, B)
    return x.gather(0, idx.view(T, -1, *([1] * (x.dim() - 2))).expand_as(x))


class RecurrentLayer(nn.Module):
    """One direction of one layer: ``weight_ih`` (G*H, I), ``weight_hh`` (G*H, H), ``bias`` (G*H)
    or None, and the normalization slots ``norm_ih``, ``norm_hh``, ``norm_sum`` (G*H features)
    and, for cells with a memory, ``norm_cell`` (H), G gates per unit (4 for the LSTM, 1 for tanh).

    Subclasses set ``gates`` and implement ``reference_recurrence``; the fused recurrence in
    :mod:`bnrnn.nn.fused` computes the same function.
    """

    gates: int = 1
    has_cell: bool = False

    def __init__(self, input_size: int, hidden_size: int, variant: Variant, *, stats: str,
                 max_steps: int, momentum: float | None, eps: float, gamma: float,
                 init: str, init_range: float, forget_bias: float | None):
        super().__init__()
        self.input_size, self.hidden_size, self.variant = input_size, hidden_size, variant
        self.init, self.init_range, self.forget_bias = init, init_range, forget_bias
        G = self.gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(G, input_size))
        self.weight_hh = nn.Parameter(torch.empty(G, hidden_size))
        self.bias = nn.Parameter(torch.empty(G)) if variant.bias else None
        opts = dict(max_steps=max_steps, momentum=momentum, eps=eps, gamma=gamma)
        # N_ih sees whole sequences (frame- or sequence-wise); the others act per step (frame-wise).
        self.norm_ih = make_norm(variant.ih, G, stats=stats, **opts)
        self.norm_hh = make_norm(variant.hh, G, stats="frame", **opts)
        self.norm_sum = make_norm(variant.sum, G, stats="frame", **opts)
        if self.has_cell:
            self.norm_cell = make_norm(variant.cell, hidden_size, stats="frame", **opts)
        self.reset_parameters()

    def gate_shift(self) -> Tensor | None:
        """The additive term of the pre-activation: b, or the β of the BN that replaces it."""
        for candidate in (self.bias, getattr(self.norm_ih, "bias", None),
                          getattr(self.norm_sum, "bias", None)):
            if candidate is not None:
                return candidate
        return None

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Weights by ``init``; norms to their papers' values (see ``bnrnn.nn.variants``).

        pytorch: U(±1/sqrt(H)) for weights and bias (``nn.LSTM``'s default);
        uniform: U(±init_range) for weights and bias (Zaremba et al.);
        glorot: each gate's (H, I) and (H, H) matrix Glorot-uniform, bias 0 (Laurent et al.);
        orthogonal: each gate's matrices (semi-)orthogonal, bias 0 (Cooijmans et al.).
        Then the forget-gate block of the gate shift is set to ``forget_bias`` if given.
        """
        H = self.hidden_size
        weights = (self.weight_ih, self.weight_hh)
        if self.init in ("pytorch", "uniform"):
            r = 1.0 / math.sqrt(H) if self.init == "pytorch" else self.init_range
            for p in (*weights, self.bias):
                if p is not None:
                    nn.init.uniform_(p, -r, r)
        else:
            fill = nn.init.xavier_uniform_ if self.init == "glorot" else nn.init.orthogonal_
            for w in weights:
                for g in range(self.gates):
                    fill(w[g * H:(g + 1) * H])
            if self.bias is not None:
                nn.init.zeros_(self.bias)
        for norm in self.norms():
            if hasattr(norm, "reset_parameters"):
                norm.reset_parameters()
        shift = self.gate_shift()
        if self.forget_bias is not None and shift is not None and self.gates == 4:
            shift[H:2 * H] = self.forget_bias

    def norms(self) -> list[nn.Module]:
        return [self.norm_ih, self.norm_hh, self.norm_sum] + ([self.norm_cell] if self.has_cell else [])

    def input_term(self, x: Tensor, mask: Tensor | None, t0: int = 0) -> Tensor:
        """N_ih(W_x x) + b for all time steps at once: x (T, B, I) -> (T, B, G*H); x[t] is
        time step t0 + t."""
        p = self.norm_ih(F.linear(x, self.weight_ih), mask, t0)
        return p + self.bias if self.bias is not None else p

    def forward(self, x: Tensor, state: tuple[Tensor, ...], mask: Tensor | None,
                backend: str, t0: int = 0) -> tuple[Tensor, tuple[Tensor, ...]]:
        """x (T, B, I), state tuple of (B, H), mask (T, B) or None -> output (T, B, H), state;
        x[t] is time step t0 + t."""
        p = self.input_term(x, mask, t0)
        if backend == "fused":
            return fused.recurrence(self, p, state, mask, t0)
        return self.reference_recurrence(p, state, mask, t0)

    def reference_recurrence(self, p: Tensor, state: tuple[Tensor, ...], mask: Tensor | None,
                             t0: int = 0) -> tuple[Tensor, tuple[Tensor, ...]]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, bias={self.bias is not None}"


def masked_update(m: Tensor | None, new: Tensor, old: Tensor) -> Tensor:
    """The state after a step: ``new`` on real frames, ``old`` frozen after a sequence's end."""
    return new if m is None else torch.where(m.unsqueeze(1), new, old)


class RecurrentStack(nn.Module):
    """``num_layers`` x ``D`` directions of a :class:`RecurrentLayer`, with dropout between layers.

    Subclasses set ``layer_class``, ``norms_allowed``, ``native`` (the ``torch._VF`` function
    of the unnormalized cell: cuDNN on GPU) and the number of state tensors.
    """

    layer_class: type[RecurrentLayer]
    norms_allowed: tuple[str, ...]
    n_states: int = 1

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bidirectional: bool = False, dropout: float = 0.0, norm: str = "none", *,
                 init: str = "pytorch", init_range: float = 0.1, forget_bias: float | None = None,
                 stats: str = "frame", gamma_init: float | None = None, max_steps: int = 100,
                 momentum: float | None = 0.1, eps: float = 1e-5, backend: str = "auto"):
        super().__init__()
        name = type(self).__name__
        _check(name, "norm", norm, self.norms_allowed)
        _check(name, "init", init, INITS)
        _check(name, "stats", stats, STATS)
        _check(name, "backend", backend, BACKENDS)
        if backend == "native" and norm != "none":
            raise ValueError(f"{name}: backend='native' (cuDNN/ATen) exists only for norm='none'; "
                             f"got norm={norm!r}: use backend='auto', 'fused' or 'reference'")
        if num_layers < 1 or not 0.0 <= dropout < 1.0:
            raise ValueError(f"{name}: need num_layers >= 1 and 0 <= dropout < 1; got "
                             f"num_layers={num_layers}, dropout={dropout}")
        variant = VARIANTS[norm]
        if stats == "sequence" and variant.ih is None:
            raise ValueError(f"{name}: stats='sequence' applies to the input term only, which "
                             f"norm={norm!r} does not normalize (its norms act inside the "
                             f"recurrence, one step at a time): use stats='frame'")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bidirectional, self.dropout, self.norm = bidirectional, dropout, norm
        self.stats, self.backend = stats, backend
        D = 2 if bidirectional else 1
        gamma = variant.gamma if gamma_init is None else gamma_init
        forget = variant.forget_bias if forget_bias is None else forget_bias
        self.layers = nn.ModuleList(
            self.layer_class(input_size if k == 0 else D * hidden_size, hidden_size, variant,
                             stats=stats, max_steps=max_steps, momentum=momentum, eps=eps,
                             gamma=gamma, init=init, init_range=init_range, forget_bias=forget)
            for k in range(num_layers) for _ in range(D))

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def reset_parameters(self) -> None:
        for layer in self.layers:
            layer.reset_parameters()

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"bidirectional={self.bidirectional}, dropout={self.dropout}, norm={self.norm!r}, "
                f"stats={self.stats!r}, backend={self.backend!r}")

    def resolve_backend(self, x: Tensor, *, compiled: bool | None = None) -> str:
        """auto: cuDNN/ATen for ``none``; our fused kernels where they are compiled for x (CUDA,
        or ``compiled=True``) and have a plan for every layer at x's batch size; else the loop."""
        if self.backend != "auto":
            return self.backend
        if self.norm == "none":
            return "native"
        if compiled is None:
            compiled = fused.compiled_for(x)
        if compiled and all(fused.refusal_of(layer, x.shape[1]) is None for layer in self.layers):
            return "fused"
        return "reference"

    # ------------------------------------------------------------------ input checks
    def check_forward_args(self, input: Tensor, state: tuple[Tensor, ...] | None,
                           lengths, t0: int = 0) -> Tensor | None:
        """Refuse a bad ``input``, ``state``, ``lengths`` or ``t0`` before any work, on every backend.

        cuDNN/ATen and the Triton kernels index memory by the shapes they are given, so a
        wrong shape there is a crash or silent garbage rather than an error; the reference
        loop would broadcast some of them. Messages use ``nn.LSTM``'s wording where it has
        one. Returns ``lengths`` as a tensor on the input's device (None stays None).

        Cost: shape, dtype and device checks read only metadata. The range check of
        ``lengths`` reads its minimum and maximum in one transfer, and only when ``lengths``
        is given (a CUDA ``lengths`` costs that one sync; a list or CPU tensor none).
        """
        name = type(self).__name__
        self._check_t0(t0)
        if not isinstance(input, Tensor):
            raise BadInput(f"{name}: input must be a Tensor (T, B, I); got {type(input).__name__}")
        if input.dim() != 3:
            raise BadInput(f"{name}: input must have 3 dimensions, got {input.dim()} "
                           f"(expected input (T, B, {self.input_size}); got {tuple(input.shape)})")
        T, B, I = input.shape
        if I != self.input_size:
            raise BadInput(f"{name}: input.size(-1) must be equal to input_size. Expected "
                           f"{self.input_size}, got {I} (expected input (T, B, {self.input_size}); "
                           f"got {tuple(input.shape)})")
        if T < 1 or B < 1:
            raise BadInput(f"{name}: input must hold at least one time step and one sequence; "
                           f"got size (T, B, I) = {tuple(input.shape)}")
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
        hi = T  # the longest sequence
        if lengths is not None:
            lengths, hi = self._check_lengths(lengths, T, B)
        if B == 1:  # only a batch of one can leave a batch norm one value per channel
            for module in self.modules():
                if isinstance(module, SeqBatchNorm):
                    # frame-wise: B values at every step; sequence-wise: the real frames, hi here
                    module.check_values(1 if module.stats == "frame" else hi, input.shape,
                                        where=f"{name}(norm={self.norm!r})")
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=input.device)
        return lengths

    def _check_t0(self, t0) -> None:
        name = type(self).__name__
        if isinstance(t0, bool) or not isinstance(t0, int) or t0 < 0:
            raise BadInput(f"{name}: t0 must be a non-negative int, the absolute time step of the "
                           f"input's first frame; got {t0!r}")
        if t0 and self.bidirectional:
            raise BadInput(f"{name}: t0={t0} with bidirectional=True: the reverse direction reads "
                           f"each sequence from its end, which has no absolute time step; run "
                           f"a bidirectional layer on whole sequences (t0=0)")

    def _check_state(self, input: Tensor, state: tuple, autocast: bool) -> None:
        name = type(self).__name__
        T, B, _ = input.shape
        expected = (self.num_layers * self.num_directions, B, self.hidden_size)
        lstm = self.n_states > 1
        if not isinstance(state, (tuple, list)) or len(state) != self.n_states or \
                not all(isinstance(s, Tensor) for s in state):
            got = type(state).__name__ if not isinstance(state, (tuple, list)) else \
                f"({', '.join(type(s).__name__ for s in state)})"
            want = f"a tuple (h0, c0) of Tensors, each {expected}" if lstm else f"a Tensor h0 {expected}"
            if not lstm:  # NormRNN.forward wrapped the user's state in a 1-tuple
                got = type(state[0]).__name__ if len(state) == 1 else got
            raise BadInput(f"{name}: state must be {want}; got {got}")
        for k, s in enumerate(state):
            which = f"hidden[{k}]" if lstm else "hidden"
            if s.dim() != 3:
                raise BadInput(f"{name}: For batched 3-D input, {'hx and cx' if lstm else 'hx'} "
                               f"should also be 3-D but got {s.dim()}-D {which} of size {list(s.shape)}")
            if tuple(s.shape) != expected:
                raise BadInput(f"{name}: Expected {which} size {expected}, got {list(s.shape)}")
            if s.device != input.device:
                raise BadInput(f"{name}: Input and hidden tensors are not at the same device, found "
                               f"input tensor at {input.device} and {which} tensor at {s.device}")
            if not s.is_floating_point() or (s.dtype != input.dtype and not autocast):
                raise BadInput(f"{name}: {which} dtype ({s.dtype}) must be the input's "
                               f"({input.dtype})")

    def _check_lengths(self, lengths, T: int, B: int) -> tuple[Tensor, int]:
        name = type(self).__name__
        if not isinstance(lengths, Tensor):
            try:
                lengths = torch.as_tensor(lengths)
            except (TypeError, ValueError, RuntimeError) as e:
                raise BadInput(f"{name}: lengths must be an integer tensor or a sequence of ints "
                               f"of shape (B,) = ({B},); got {type(lengths).__name__} ({e})") from None
        if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
            raise BadInput(f"{name}: lengths must be an integer tensor (torch.int64), not "
                           f"{lengths.dtype}: the number of real frames of each sequence")
        if tuple(lengths.shape) != (B,):
            raise BadInput(f"{name}: lengths must be (B,) = ({B},), one length per sequence; got "
                           f"shape {tuple(lengths.shape)}")
        lo, hi = torch.stack(torch.aminmax(lengths)).tolist()  # one transfer for both bounds
        if lo < 1 or hi > T:
            raise BadInput(f"{name}: lengths must be (B,)=({B},) in [1, {T}] (T = input.size(0); "
                           f"any order); got {lengths.tolist()}")
        return lengths, hi

    # ------------------------------------------------------------------ forward
    def run(self, input: Tensor, state: tuple[Tensor, ...] | None, lengths: Tensor | None,
            t0: int = 0) -> tuple[Tensor, tuple[Tensor, ...]]:
        """input (T, B, I), state: tuple of (L*D, B, H) or None (zeros), lengths (B,) or None,
        t0 the time step of input[0] -> output (T, B, D*H) (zeros at padded steps), final state
        tuple of (L*D, B, H)."""
        lengths = self.check_forward_args(input, state, lengths, t0)
        T, B, _ = input.shape
        D, H = self.num_directions, self.hidden_size
        if state is None:
            zeros = input.new_zeros(self.num_layers * D, B, H)
            state = (zeros,) * self.n_states
        backend = self.resolve_backend(input)
        if backend == "native":
            return self.native_forward(input, state, lengths)
        mask = lengths_mask(lengths, T)
        x, finals = input, []
        for k in range(self.num_layers):
            outs = []
            for d in range(D):
                i = k * D + d
                xd = x if d == 0 else reverse_padded(x, lengths)
                out, last = self.layers[i](xd, tuple(s[i] for s in state), mask, backend, t0)
                outs.append(out if d == 0 else reverse_padded(out, lengths))
                finals.append(last)
            x = outs[0] if D == 1 else torch.cat(outs, dim=-1)
            if self.dropout and k < self.num_layers - 1:
                x = F.dropout(x, self.dropout, self.training)
        return x, tuple(torch.stack(s) for s in zip(*finals))

    native_fn = None  # torch._VF.lstm / torch._VF.rnn_tanh

    def native_forward(self, input: Tensor, state: tuple[Tensor, ...],
                       lengths: Tensor | None) -> tuple[Tensor, tuple[Tensor, ...]]:
        """norm='none' through PyTorch's own RNN kernels (cuDNN on GPU), with our weights."""
        weights = []
        for layer in self.layers:  # nn.LSTM's order: layer-major, direction-minor
            weights += [layer.weight_ih, layer.weight_hh, layer.bias, torch.zeros_like(layer.bias)]
        args = (weights, True, self.num_layers, self.dropout, self.training, self.bidirectional)
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


def _check(cls: str, arg: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{cls}: {arg} must be one of {', '.join(allowed)}; got {value!r}")
