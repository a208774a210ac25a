"""``NormLSTM``: one LSTM layer with every normalization variant, behind ``nn.LSTM``'s interface.

At each time step t, for the variant's slots (``bnrnn.nn.variants``; gates i, f, g, o)::

    a_t = N_sum( N_ih(W_x x_t) [+ b] + N_hh(W_h h_{t-1}) )
    c_t = σ(f_t) ⊙ c_{t-1} + σ(i_t) ⊙ tanh(g_t)          (the unnormalized c_t is carried)
    h_t = σ(o_t) ⊙ tanh(N_cell(c_t))

==============  =====================================================  ==========================
norm            pre-activation / output                                 source
==============  =====================================================  ==========================
none            W_h h + W_x x + b                                       nn.LSTM (cuDNN)
bn_input        W_h h + BN(W_x x; γ, β)                                 Laurent et al. eq. 18
bn_recurrent    BN(W_h h; γ_h, 0) + BN(W_x x; γ_x, 0) + b,              Cooijmans et al. eqs. 6-8
                h = σ(o) tanh(BN(c; γ_c, β_c))
ln              LN(W_h h) + LN(W_x x) + b, h = σ(o) tanh(LN(c))         Ba et al. 2016
bn_sum          BN(W_h h + W_x x; γ, β)                                 Laurent et al. eq. 17
==============  =====================================================  ==========================
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnrnn.nn.base import RecurrentLayer, RecurrentStack, masked_update
from bnrnn.nn.variants import VARIANTS


class LSTMLayer(RecurrentLayer):
    """One direction of one LSTM layer (see :class:`~bnrnn.nn.base.RecurrentLayer`)."""

    gates, has_cell = 4, True

    def reference_recurrence(self, p: Tensor, state: tuple[Tensor, Tensor], mask: Tensor | None,
                             t0: int = 0) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """The plain loop every fast path is tested against.

        p: N_ih(W_x x) + b, (T, B, 4H); state: (h0, c0), each (B, H); mask: (T, B) or None;
        p[t] is time step t0 + t (the per-step statistics it uses).
        Returns the outputs (T, B, H) (zeros at padded steps) and the final (h, c), frozen
        after each sequence's last real frame.
        """
        h, c = state
        outs = []
        steps = p.unbind(0)  # not p[t]: each p[t]'s backward would allocate a full (T, B, 4H) zero tensor (O(T²))
        for t in range(p.shape[0]):
            m, s = None if mask is None else mask[t], t0 + t
            a = self.norm_sum.step(steps[t] + self.norm_hh.step(F.linear(h, self.weight_hh), s, m), s, m)
            i, f, g, o = a.chunk(4, dim=1)
            c_t = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h_t = torch.sigmoid(o) * torch.tanh(self.norm_cell.step(c_t, s, m))
            h, c = masked_update(m, h_t, h), masked_update(m, c_t, c)
            outs.append(h_t if m is None else h_t * m.unsqueeze(1).to(h_t.dtype))
        return torch.stack(outs), (h, c)


class NormLSTM(RecurrentStack):
    """A stacked (bidirectional) LSTM with one of the normalization variants in the table above.

    Args:
        input_size, hidden_size, num_layers, bidirectional, dropout: as ``nn.LSTM`` (dropout
            on the outputs of every layer but the last).
        norm: ``none | bn_input | bn_recurrent | ln | bn_sum``.
        init: ``pytorch`` (nn.LSTM's U(±1/sqrt(H))), ``uniform`` (U(±init_range), Zaremba et
            al.), ``glorot`` (per gate, zero bias: Laurent et al.), ``orthogonal`` (Cooijmans).
        forget_bias: forget-gate block of b (or of the β replacing it); default per variant
            (1 for bn_recurrent, as in Cooijmans' code; otherwise what ``init`` gives).
        stats: BN statistics of the input term: ``frame`` (per time step; language models,
            which must not see the future) or ``sequence`` (over batch and time, real frames
            only; speech). Norms inside the recurrence are always frame-wise.
        gamma_init: initial BN/LN gain; default per variant (0.1 for bn_recurrent, else 1).
        max_steps: T_max, per-step population statistics kept; later steps use T_max's.
        momentum, eps: of the population statistics and the variance (see ``SeqBatchNorm``).
        backend: ``auto`` (cuDNN for none, our fused kernels on CUDA, else the reference
            loop), ``native`` (none only), ``fused`` or ``reference``.

    ``forward(input (T, B, I), state=None | (h0, c0) each (L*D, B, H), lengths=None | (B,),
    *, t0=0)`` returns ``output (T, B, D*H), (h_n, c_n)`` like ``nn.LSTM``. With ``lengths``, the
    state stays frozen after each sequence's end, the reverse direction reads each sequence's
    real frames only, outputs at padded steps are zero and no statistic sees padding.

    Streaming: ``t0`` is the absolute time step of ``input[0]``. A long sequence run in chunks,
    each with the previous chunk's final state and its own ``t0``, computes what the whole
    sequence computes: frame-wise BN uses (and in training updates) the population statistic of
    step t0 + t (steps >= max_steps use the last one). Unidirectional only (a reverse direction
    has no absolute time); sequence-wise statistics are over the chunk given.
    """

    layer_class = LSTMLayer
    norms_allowed = tuple(VARIANTS)
    n_states = 2
    native_fn = staticmethod(torch._VF.lstm)

    def forward(self, input: Tensor, state: tuple[Tensor, Tensor] | None = None,
                lengths: Tensor | None = None, *, t0: int = 0) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        out, (h, c) = self.run(input, state, lengths, t0)
        return out, (h, c)

    @classmethod
    def from_lstm(cls, lstm: nn.LSTM, norm: str = "none", **options) -> "NormLSTM":
        """A NormLSTM with ``lstm``'s weights (b = b_ih + b_hh, or into the β replacing b).

        With ``norm='none'`` it computes exactly what ``lstm`` computes.
        """
        if lstm.batch_first or lstm.proj_size:
            raise ValueError("NormLSTM.from_lstm: batch_first and proj_size LSTMs are not supported")
        new = cls(lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.bidirectional,
                  lstm.dropout, norm, **options)
        D = new.num_directions
        with torch.no_grad():
            for i, layer in enumerate(new.layers):
                sfx = f"_l{i // D}" + ("_reverse" if i % D else "")
                layer.weight_ih.copy_(getattr(lstm, "weight_ih" + sfx))
                layer.weight_hh.copy_(getattr(lstm, "weight_hh" + sfx))
                shift = layer.gate_shift()
                if lstm.bias and shift is not None:
                    shift.copy_(getattr(lstm, "bias_ih" + sfx) + getattr(lstm, "bias_hh" + sfx))
                elif shift is not None and not lstm.bias:
                    shift.zero_()
        return new.to(lstm.weight_ih_l0.device, lstm.weight_ih_l0.dtype)
