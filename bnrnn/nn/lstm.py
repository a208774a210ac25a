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
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from bnrnn.nn.base import RecurrentLayer, RecurrentStack, masked_output, masked_update, member_linear
from bnrnn.nn.variants import VARIANTS


class LSTMLayer(RecurrentLayer):
    """One direction of one LSTM layer (see :class:`~bnrnn.nn.base.RecurrentLayer`)."""

    gates, has_cell = 4, True

    def reference_recurrence(self, p: Tensor, state: tuple[Tensor, Tensor], mask: Tensor | None,
                             t0: int = 0) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """The plain loop every fast path is tested against.

        p: N_ih(W_x x) + b, (T, B, 4H); state: (h0, c0), each (B, H); mask: (T, B) or None;
        p[t] is time step t0 + t (the per-step statistics it uses). A population's shapes:
        (T, M, B, 4H), (M, B, H), (T, M, B); member m's rows see only member m's weights.
        Returns the outputs (T, B, H) (zeros at padded steps) and the final (h, c), frozen
        after each sequence's last real frame; with ``weight_hr`` (proj_size P) h and the
        outputs are of size P.
        """
        h, c = state
        outs = []
        steps = p.unbind(0)  # not p[t]: each p[t]'s backward would allocate a full (T, B, 4H) zero tensor (O(T²))
        for t in range(p.shape[0]):
            m, s = None if mask is None else mask[t], t0 + t
            a = self.norm_sum.step(steps[t] + self.norm_hh.step(member_linear(h, self.weight_hh), s, m), s, m)
            i, f, g, o = a.chunk(4, dim=-1)
            c_t = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h_t = torch.sigmoid(o) * torch.tanh(self.norm_cell.step(c_t, s, m))
            if self.weight_hr is not None:  # proj_size: h_t = W_hr (σ(o) tanh(N_cell(c_t)))
                h_t = member_linear(h_t, self.weight_hr)
            h, c = masked_update(m, h_t, h), masked_update(m, c_t, c)
            outs.append(masked_output(m, h_t))
        return torch.stack(outs), (h, c)


class NormLSTM(RecurrentStack):
    """A stacked (bidirectional) LSTM with one of the normalization variants in the table above.

    Args (``nn.LSTM``'s, in its order; the rest keyword-only):
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
            proj_size, device, dtype: as ``nn.LSTM`` (dropout on the outputs of every layer but
            the last; ``bias=False`` also drops the β of a BN replacing b; ``proj_size`` P > 0:
            h_t = W_hr (σ(o) tanh(N_cell(c_t))), on the native and reference backends).
        norm: ``none | bn_input | bn_recurrent | ln | bn_sum``.
        init: ``pytorch`` (nn.LSTM's U(±1/sqrt(H))), ``uniform`` (U(±init_range), Zaremba et
            al.), ``glorot`` (per gate, zero bias: Laurent et al.), ``orthogonal`` (Cooijmans).
        forget_bias: the forget-gate block of b (or of the β replacing it), for every variant
            (``ln`` included); default per variant: 1 for bn_recurrent (Cooijmans' code),
            otherwise what ``init`` gives (``forget_bias=1.0`` for ``ln`` is TensorFlow's
            LayerNormBasicLSTMCell; README "Initialisation" tabulates every variant).
        split_bias: keep ``nn.LSTM``'s two biases b_ih, b_hh (b = b_ih + b_hh) instead of one
            b, so that optimizer steps too are nn.LSTM's (variants with a b only).
        stats: BN statistics of the input term: ``frame`` (per time step; language models,
            which must not see the future) or ``sequence`` (over batch and time, real frames
            only; speech). Norms inside the recurrence are always frame-wise.
        gamma_init: initial BN/LN gain; default per variant (0.1 for bn_recurrent, else 1).
        max_steps: T_max, per-step population statistics kept; later steps use T_max's.
        momentum, eps: of the population statistics and the variance (see ``SeqBatchNorm``).
        backend: ``auto`` (cuDNN for none, our fused kernels on CUDA, else the reference
            loop), ``native`` (none only), ``fused`` or ``reference``.
        population: None (an ordinary layer), or M: a population of M independent layers of
            this configuration run side by side (below; docs/population.md).

    ``forward(input (T, B, I), hx=None | (h0, c0) each (L*D, B, H), lengths=None | (B,),
    *, t0=0)`` returns ``output (T, B, D*H), (h_n, c_n)`` like ``nn.LSTM``, and takes its other
    input forms too: (B, T, I) with ``batch_first``, one unbatched (T, I) sequence (states
    (L*D, H)), a ``PackedSequence`` (output packed alike). With a projection h, h0 and the
    output have P features instead of H. With ``lengths``, the state stays frozen after each
    sequence's end, the reverse direction reads each sequence's real frames only, outputs at
    padded steps are zero and no statistic sees padding. ``step(x_t, hx, t)`` is one time step.
    An ``nn.LSTM`` state dict loads as it is (b = b_ih + b_hh); ``from_lstm`` / ``to_lstm``.

    Streaming: ``t0`` is the absolute time step of ``input[0]``. A long sequence run in chunks,
    each with the previous chunk's final state and its own ``t0``, computes what the whole
    sequence computes: frame-wise BN uses (and in training updates) the population statistic of
    step t0 + t (steps >= max_steps use the last one). Unidirectional only (a reverse direction
    has no absolute time); sequence-wise statistics are over the chunk given.

    Population (``population=M``): every parameter and buffer has a leading axis M (weights,
    biases, γ/β, per-step population statistics); input (T, M, B, I) -> output (T, M, B, D*H),
    states (L*D, M, B, H), ``lengths`` (M, B) or a shared (B,). Member m computes exactly what
    an ordinary layer with member m's parameters computes on ``input[:, m]``: batch statistics
    over its own rows and real frames only, its own population statistics. ``norm='none'`` runs
    our loops (cuDNN cannot batch different weights).
    """

    layer_class = LSTMLayer
    norms_allowed = tuple(VARIANTS)
    n_states = 2
    native_fn = staticmethod(torch._VF.lstm)

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None, *, norm: str = "none", **options):
        super().__init__(input_size, hidden_size, num_layers, bias=bias, batch_first=batch_first,
                         dropout=dropout, bidirectional=bidirectional, proj_size=proj_size,
                         device=device, dtype=dtype, norm=norm, **options)

    def forward(self, input: Tensor | PackedSequence, hx: tuple[Tensor, Tensor] | None = None,
                lengths: Tensor | None = None, *, t0: int = 0
                ) -> tuple[Tensor | PackedSequence, tuple[Tensor, Tensor]]:
        out, (h, c) = self.forward_forms(input, hx, lengths, t0)
        return out, (h, c)

    def step(self, x_t: Tensor, hx: tuple[Tensor, Tensor] | None = None, t: int = 0
             ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """One time step: x_t (B, I) at absolute step t, hx (h, c) each (L, B, H) or None ->
        output (B, H), (h, c); equal to the sequence call step by step (``step_forms``)."""
        out, (h, c) = self.step_forms(x_t, hx, t)
        return out, (h, c)

    torch_class = nn.LSTM
    torch_class_arguments = ("input_size", "hidden_size", "num_layers", "bias", "batch_first",
                             "dropout", "bidirectional", "proj_size")

    def torch_arguments(self) -> dict:
        return {**super().torch_arguments(), "proj_size": self.proj_size}

    @classmethod
    def from_lstm(cls, lstm: nn.LSTM, norm: str = "none", **options) -> "NormLSTM":
        """A NormLSTM with ``lstm``'s configuration and weights (:meth:`from_torch`): with
        ``norm='none'`` it computes exactly what ``lstm`` computes."""
        return cls.from_torch(lstm, norm, **options)

    def to_lstm(self) -> nn.LSTM:
        """The ``nn.LSTM`` computing what this ``norm='none'`` layer computes (:meth:`to_torch`)."""
        return self.to_torch()
