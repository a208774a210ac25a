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
import torch.nn.functional as F
from torch import Tensor

from bnrnn.nn.base import RecurrentLayer, RecurrentStack, masked_update


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
            h_t = torch.tanh(self.norm_sum.step(steps[t] + self.norm_hh.step(F.linear(h, self.weight_hh), s, m), s, m))
            h = masked_update(m, h_t, h)
            outs.append(h_t if m is None else h_t * m.unsqueeze(1).to(h_t.dtype))
        return torch.stack(outs), (h,)


class NormRNN(RecurrentStack):
    """A stacked (bidirectional) tanh RNN, ``norm`` in ``none | bn_input | bn_sum``.

    Arguments as :class:`~bnrnn.nn.lstm.NormLSTM`. ``forward(input (T, B, I), state=None |
    h0 (L*D, B, H), lengths=None | (B,), *, t0=0)`` returns ``output (T, B, D*H), h_n
    (L*D, B, H)`` like ``nn.RNN``; ``t0`` (streaming chunks) as NormLSTM's.
    """

    layer_class = TanhLayer
    norms_allowed = ("none", "bn_input", "bn_sum")
    n_states = 1
    native_fn = staticmethod(torch._VF.rnn_tanh)

    def forward(self, input: Tensor, state: Tensor | None = None,
                lengths: Tensor | None = None, *, t0: int = 0) -> tuple[Tensor, Tensor]:
        out, (h,) = self.run(input, None if state is None else (state,), lengths, t0)
        return out, h
