"""What every normalized recurrent layer shares: parameters and norms of one direction of one
layer (:class:`RecurrentLayer`), and the stack of layers and directions with padding, reversal,
dropout and state handling (:class:`RecurrentStack`). ``NormLSTM`` and ``NormRNN`` only add
their cell's time step.

Shapes are time-major like ``nn.LSTM``: input (T, B, I), output (T, B, D*H), states
(L*D, B, H), ``lengths`` (B,). Gate order i, f, g, o (``nn.LSTM``'s).
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnrnn.nn.norms import STATS
from bnrnn.nn.variants import VARIANTS, Variant, make_norm

INITS = ("pytorch", "uniform", "glorot", "orthogonal")
BACKENDS = ("auto", "reference", "native", "fused")


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
        self.input_size, self.hidden_size = input_size, hidden_size
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

    def input_term(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """N_ih(W_x x) + b for all time steps at once: x (T, B, I) -> (T, B, G*H)."""
        p = self.norm_ih(F.linear(x, self.weight_ih), mask)
        return p + self.bias if self.bias is not None else p

    def forward(self, x: Tensor, state: tuple[Tensor, ...], mask: Tensor | None,
                backend: str) -> tuple[Tensor, tuple[Tensor, ...]]:
        """x (T, B, I), state tuple of (B, H), mask (T, B) or None -> output (T, B, H), state."""
        p = self.input_term(x, mask)
        if backend == "fused":
            from bnrnn.nn import fused

            return fused.recurrence(self, p, state, mask)
        return self.reference_recurrence(p, state, mask)

    def reference_recurrence(self, p: Tensor, state: tuple[Tensor, ...],
                             mask: Tensor | None) -> tuple[Tensor, tuple[Tensor, ...]]:
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

    def resolve_backend(self, x: Tensor) -> str:
        """auto: cuDNN/ATen for ``none``; our fused kernels on CUDA for the rest; else the loop."""
        if self.backend != "auto":
            return self.backend
        if self.norm == "none":
            return "native"
        from bnrnn.nn import fused

        fast = x.is_cuda and fused.available() and fused.supports(self.layers[0])
        return "fused" if fast else "reference"

    # ------------------------------------------------------------------ forward
    def run(self, input: Tensor, state: tuple[Tensor, ...] | None,
            lengths: Tensor | None) -> tuple[Tensor, tuple[Tensor, ...]]:
        """input (T, B, I), state: tuple of (L*D, B, H) or None (zeros), lengths (B,) or None
        -> output (T, B, D*H) (zeros at padded steps), final state tuple of (L*D, B, H)."""
        T, B, _ = input.shape
        if input.shape[-1] != self.input_size:
            raise ValueError(f"{type(self).__name__}: expected input (T, B, {self.input_size}); "
                             f"got {tuple(input.shape)}")
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=input.device)
            if lengths.shape != (B,) or int(lengths.min()) < 1 or int(lengths.max()) > T:
                raise ValueError(f"{type(self).__name__}: lengths must be (B,)=({B},) in [1, {T}]; "
                                 f"got {lengths.tolist()}")
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
                out, last = self.layers[i](xd, tuple(s[i] for s in state), mask, backend)
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
