"""The normalization variants, as data: which term of a recurrent layer each one normalizes.

A recurrent layer computes, at every time step t (``docs/reference.md`` §1)::

    a_t = N_sum( N_ih(W_x x_t)[+ b] + N_hh(W_h h_{t-1}) )      pre-activation of the G gates
    LSTM:  c_t = σ(f) c_{t-1} + σ(i) tanh(g);   h_t = σ(o) tanh(N_cell(c_t))
    tanh:  h_t = tanh(a_t)

with four normalization slots N_ih, N_hh, N_sum, N_cell. Each variant fills them as below;
an empty slot is :class:`~bnrnn.nn.norms.NoNorm`, so the layer code never branches on the variant.
``N_ih`` sees the whole sequence at once (it does not depend on the recurrence); the other three
act inside the recurrence, one time step at a time, and so use frame-wise statistics.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn

from bnrnn.nn.norms import NoNorm, SeqBatchNorm, SeqLayerNorm


@dataclass(frozen=True)
class Slot:
    kind: str          # "bn" | "ln"
    shift: bool        # learn β (False: β = 0, the LSTM bias b takes its place)


@dataclass(frozen=True)
class Variant:
    ih: Slot | None    # N_ih: of W_x x, whole sequence
    hh: Slot | None    # N_hh: of W_h h_{t-1}, per step
    sum: Slot | None   # N_sum: of the summed pre-activation, per step
    cell: Slot | None  # N_cell: of c_t inside the output tanh (LSTM only); c_t itself is carried
    bias: bool         # the layer has the bias b (False where a BN's β replaces it)
    gamma: float       # default initial gain of every slot
    forget_bias: float | None  # default forget-gate bias (None: whatever ``init`` gives)
    source: str


BN, BN0, LN, LN0 = Slot("bn", True), Slot("bn", False), Slot("ln", True), Slot("ln", False)

VARIANTS: dict[str, Variant] = {
    # W_h h + W_x x + b
    "none": Variant(None, None, None, None, True, 1.0, None, "Hochreiter & Schmidhuber 1997; nn.LSTM"),
    # W_h h + BN(W_x x; γ, β): β replaces b, γ = 1 as in the authors' code
    "bn_input": Variant(BN, None, None, None, False, 1.0, None, "Laurent et al. 2016, eq. 18"),
    # BN(W_h h; γ_h, 0) + BN(W_x x; γ_x, 0) + b, h = σ(o) tanh(BN(c; γ_c, β_c)); γ = 0.1 and
    # forget bias 1 as in the official code
    "bn_recurrent": Variant(BN0, BN0, None, BN, True, 0.1, 1.0, "Cooijmans et al. 2016, eqs. 6-8"),
    # LN(W_h h; α_h, 0) + LN(W_x x; α_x, 0) + b, h = σ(o) tanh(LN(c; α_c, β_c))
    "ln": Variant(LN0, LN0, None, LN, True, 1.0, None, "Ba et al. 2016, §A (lnlstm_layer)"),
    # BN(W_h h + W_x x; γ, β), per-step statistics, γ/β shared over time
    "bn_sum": Variant(None, None, BN, None, False, 1.0, None, "Laurent et al. 2016, eq. 17"),
}


def without_bias(variant: Variant) -> Variant:
    """``variant`` with no additive term in its gates' pre-activation (``bias=False``, as
    ``nn.LSTM``'s): b removed, and the β of the N_ih or N_sum batch norm that replaces b fixed at 0.
    N_cell's β_c shifts the normalized cell, not a gate, and stays."""
    def fixed(slot: Slot | None) -> Slot | None:
        return None if slot is None else replace(slot, shift=False)
    return replace(variant, bias=False, ih=fixed(variant.ih), sum=fixed(variant.sum))


def make_norm(slot: Slot | None, num_features: int, *, stats: str, max_steps: int,
              momentum: float | None, eps: float, gamma: float,
              population: int | None = None) -> nn.Module:
    """The module for one slot: NoNorm, SeqBatchNorm or SeqLayerNorm over ``num_features``
    (with ``population`` members)."""
    if slot is None:
        return NoNorm()
    if slot.kind == "bn":
        return SeqBatchNorm(num_features, stats=stats, max_steps=max_steps, momentum=momentum,
                            eps=eps, gamma_init=gamma, shift=slot.shift, population=population)
    return SeqLayerNorm(num_features, eps=eps, gamma_init=gamma, shift=slot.shift,
                        population=population)
