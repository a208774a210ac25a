"""``NormRNN``: the simple tanh RNN of Laurent et al.'s appendix, ``h_t = tanh(a_t)`` with

==========  ==============================  =======================
norm        pre-activation a_t              source
==========  ==============================  =======================
none        W_h h + W_x x + b               nn.RNN
bn_input    W_h h + BN(W_x x; γ, β)         Laurent et al. eq. 18
bn_sum      BN(W_h h + W_x x; γ, β)         Laurent et al. eq. 17
==========  ==============================  =======================

``bn_sum`` keeps one mean and variance per feature and time step (population statistics per
step too) and one γ, β shared over time, as in the appendix grid search.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from bnrnn.nn.base import RecurrentLayer, RecurrentStack, masked_output, masked_update, member_linear


class TanhLayer(RecurrentLayer):
    """One direction of one tanh-RNN layer (see :class:`~bnrnn.nn.base.RecurrentLayer`)."""

    gates, has_cell = 1, False

    def reference_recurrence(self, p: Tensor, state: tuple[Tensor], mask: Tensor | None,
                             t0: int = 0) -> tuple[Tensor, tuple[Tensor]]:
        """p (T, B, H), state (h0,) with h0 (B, H), mask (T, B) or None -> (T, B, H), (h,);
        p[t] is time step t0 + t."""
        (h,) = state
        outs = []
        steps = p.unbind(0)  # not p[t]: each p[t]'s backward would allocate a full (T, B, H) zero tensor (O(T²))
        for t in range(p.shape[0]):
            m, s = None if mask is None else mask[t], t0 + t
            h_t = torch.tanh(self.norm_sum.step(steps[t] + self.norm_hh.step(member_linear(h, self.weight_hh), s, m), s, m))
            h = masked_update(m, h_t, h)
            outs.append(masked_output(m, h_t))
        return torch.stack(outs), (h,)


class NormRNN(RecurrentStack):
    """A stacked (bidirectional) tanh RNN, ``norm`` in ``none | bn_input | bn_sum``.

    ``nn.RNN``'s arguments in its order (``nonlinearity='tanh'`` only), the rest keyword-only
    as :class:`~bnrnn.nn.lstm.NormLSTM`'s. ``forward(input (T, B, I), hx=None | h0 (L*D, B, H),
    lengths=None | (B,), *, t0=0)`` returns ``output (T, B, D*H), h_n (L*D, B, H)`` like
    ``nn.RNN``, with its input forms (batch_first, unbatched, PackedSequence) and state dicts
    (``from_rnn`` / ``to_rnn``); ``step(x_t, hx, t)`` is one time step; ``t0`` (streaming chunks) and ``population=M`` (input
    (T, M, B, I), h0 (L*D, M, B, H), lengths (M, B) or (B,)) as NormLSTM's.
    """

    layer_class = TanhLayer
    norms_allowed = ("none", "bn_input", "bn_sum")
    n_states = 1
    native_fn = staticmethod(torch._VF.rnn_tanh)

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, device=None, dtype=None, *,
                 norm: str = "none", **options):
        if nonlinearity != "tanh":
            raise ValueError(f"NormRNN: nonlinearity={nonlinearity!r} is not supported: the "
                             f"normalized variants (and their fused kernels) are tanh RNNs, as "
                             f"in Laurent et al.; use nonlinearity='tanh' (or nn.RNN)")
        if options.get("forget_bias") is not None:
            raise ValueError("NormRNN: forget_bias is the LSTM's forget-gate bias; a tanh RNN has "
                             "no forget gate: drop it")
        super().__init__(input_size, hidden_size, num_layers, bias=bias, batch_first=batch_first,
                         dropout=dropout, bidirectional=bidirectional, device=device,
                         dtype=dtype, norm=norm, **options)

    def forward(self, input: Tensor | PackedSequence, hx: Tensor | None = None,
                lengths: Tensor | None = None, *, t0: int = 0) -> tuple[Tensor | PackedSequence, Tensor]:
        out, (h,) = self.forward_forms(input, None if hx is None else (hx,), lengths, t0)
        return out, h

    def step(self, x_t: Tensor, hx: Tensor | None = None, t: int = 0) -> tuple[Tensor, Tensor]:
        """One time step: x_t (B, I) at absolute step t, hx (L, B, H) or None -> output (B, H),
        h; equal to the sequence call step by step (``step_forms``)."""
        out, (h,) = self.step_forms(x_t, None if hx is None else (hx,), t)
        return out, h

    torch_class = nn.RNN
    torch_class_arguments = ("input_size", "hidden_size", "num_layers", "nonlinearity", "bias",
                             "batch_first", "dropout", "bidirectional")

    @classmethod
    def from_rnn(cls, rnn: nn.RNN, norm: str = "none", **options) -> "NormRNN":
        """A NormRNN with ``rnn``'s configuration and weights (:meth:`from_torch`)."""
        return cls.from_torch(rnn, norm, **options)

    def to_rnn(self) -> nn.RNN:
        """The ``nn.RNN`` computing what this ``norm='none'`` layer computes (:meth:`to_torch`)."""
        return self.to_torch()
