"""Triton kernels: one time step of the LSTM (and of the tanh RNN) with its normalizations,
forward and backward.

A step of the recurrence is two launches: the recurrent product ``r = h_{t-1} W_hh^T`` (cuBLAS)
and :func:`lstm_step_fwd`, which does everything else of the step in one pass over the
(B, G*H) pre-activations: the normalization of ``r`` (N_hh), the sum with the hoisted input term
``p_t = N_ih(W_x x_t) + b``, the normalization of the sum (N_sum), the gates, the cell, its
normalization (N_cell), the output and the masked state update.

A program owns a tile of rows (batch) x gates x hidden units, shaped (BLOCK_B, G, BLOCK_H): the
G gate columns ``k*H + j`` of each unit j it holds, so the G gates are one tensor and every
normalization is one reduction over the tile. The grid is (row blocks, unit blocks, members):
a population of M members (each with its own weights, γ/β and statistics) is one launch, and
program_id(2) = m reads member m's slice of every tensor, laid out member-major: rows of
(M, B, .) tensors at m*B + b, features of (M, F) ones at m*F + f. An ordinary layer is M = 1.

- BN (statistics per feature, over the batch) sums over axis 0: the tile must hold every row,
  ``BLOCK_B >= B``;
- LN (statistics per row, over its features) sums over axes 1 and 2: the tile must hold every
  unit, ``BLOCK_H >= H``.

States h, c are (BLOCK_B, 1, BLOCK_H) tiles; per-row values (BLOCK_B, 1, 1); per-feature values
(1, G, BLOCK_H). :func:`_preactivation` and :func:`_norm` are the forward's computation, and the
backward kernels call the same functions to recompute the step from ``r``, ``p_t``, ``c_{t-1}``
and the saved statistics, then write ∂L/∂r, ∂L/∂p_t, ∂L/∂c_{t-1}, the part of ∂L/∂h_{t-1} that
padding passes through, and per-program partial sums of the gains' and shifts' gradients.

Flags about which tensors there are (HAS_MASK, HAS_BETA_*) and the arithmetic (F64: float64 for
float64 inputs, else float32) are derived from the arguments; pass ``None`` for an absent tensor.
Statistics follow ``bnrnn.nn.norms`` exactly.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# Slot kinds: the HH / SUM / CELL constexprs of the kernels. ``fused.KERNEL_KIND`` maps the
# variants' slot kinds onto these; a new kind is a new number here and its branch in _norm.
NONE, BN, LN = 0, 1, 2
_BN = tl.constexpr(BN)
_LN = tl.constexpr(LN)


def _flags(*optional: str) -> dict:
    """triton.heuristics deriving HAS_<NAME> from whether that argument is None, and F64."""
    flags = {"HAS_" + name.upper(): (lambda args, name=name: args[name] is not None) for name in optional}
    flags["F64"] = lambda args: args["p"].dtype == torch.float64
    return flags


@triton.jit
def _cast(x, F64: tl.constexpr):
    if F64:
        return x.to(tl.float64)
    return x.to(tl.float32)


@triton.jit
def _load(ptr, mask, F64: tl.constexpr):
    return _cast(tl.load(ptr, mask=mask, other=0.0), F64)


@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _tile(mask, B, H, G: tl.constexpr, HAS_MASK: tl.constexpr, F64: tl.constexpr,
          BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """This program's tile: its member m, rows (BB, 1, 1) of the member's batch and units
    (1, 1, BH) with their bounds masks rm, um, ``row`` = m*B + rows (the rows in (M, B, .)
    tensors), cols (1, G, BH) = the feature k*H + j of gate k of unit j, the real-frame rows
    ``real`` (``mask``: (M, B) int8), and as floats w = real rows, u = real units, n = Σw (at
    least 1)."""
    member = tl.program_id(2)
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)[:, None, None]
    units = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)[None, None, :]
    cols = tl.arange(0, G)[None, :, None] * H + units
    rm, um = rows < B, units < H
    row = member * B + rows
    if HAS_MASK:
        real = (tl.load(mask + row, mask=rm, other=0) != 0) & rm
    else:
        real = rm
    w = _cast(real, F64)
    u = _cast(um, F64)
    n = tl.maximum(tl.sum(w, axis=0, keep_dims=True), 1.0)
    return member, row, units, cols, rm, um, real, w, u, n


@triton.jit
def _offsets(row, units, cols, rm, um, H, G: tl.constexpr):
    """Offsets of a gate tile in an (M, B, G*H) tensor and of a state tile in an (M, B, H) one
    (``row`` = m*B + b), and the tile's bounds mask."""
    return row * (G * H) + cols, row * H + units, rm & um


@triton.jit
def _part(member, F):
    """Where this program's partial sums of the (F,) gain/shift gradients of its member start in
    an (M, row-programs, F) buffer."""
    return (member * tl.num_programs(0) + tl.program_id(0)) * F


@triton.jit
def _row_sum(x):
    """Σ over the features of each row of a (BB, G, BH) tile -> (BB, 1, 1)."""
    return tl.sum(tl.sum(x, axis=2, keep_dims=True), axis=1, keep_dims=True)


# ------------------------------------------------------------------ one normalization slot
@triton.jit
def _norm(x, KIND: tl.constexpr, COMPUTE: tl.constexpr, mean, var, gamma, beta,
          HAS_BETA: tl.constexpr, cols, rows, rm, um, w, u, n, nf, eps, F64: tl.constexpr):
    """y = γ x̂ [+ β], x̂ = (x - μ) rstd, of a tile x (BB, G, BH): BN statistics per feature
    over the real rows (w, n = Σw), LN per row over its nf features (u: real units); computed
    and stored at mean/var (COMPUTE) or loaded from there. ``cols`` index the member's features
    in (M, F) tensors (γ, β, BN statistics), ``rows`` its rows in (M, B) ones (LN statistics).
    Returns y, x̂, rstd, γ."""
    if KIND == _BN:
        if COMPUTE:
            mu = tl.sum(x * w, axis=0, keep_dims=True) / n
            d = (x - mu) * w
            sigma2 = tl.sum(d * d, axis=0, keep_dims=True) / n
            tl.store(mean + cols, mu, mask=um)
            tl.store(var + cols, sigma2, mask=um)
        else:
            mu = _load(mean + cols, um, F64)
            sigma2 = _load(var + cols, um, F64)
    else:
        if COMPUTE:
            mu = _row_sum(x * u) / nf
            d = (x - mu) * u
            sigma2 = _row_sum(d * d) / nf
            tl.store(mean + rows, mu, mask=rm)
            tl.store(var + rows, sigma2, mask=rm)
        else:
            mu = _load(mean + rows, rm, F64)
            sigma2 = _load(var + rows, rm, F64)
    rstd = 1.0 / tl.sqrt(sigma2 + eps)
    xh = (x - mu) * rstd
    g = _load(gamma + cols, um, F64)
    y = xh * g
    if HAS_BETA:
        y += _load(beta + cols, um, F64)
    return y, xh, rstd, g


@triton.jit
def _norm_bwd(dy, xh, rstd, g, KIND: tl.constexpr, BATCH: tl.constexpr, dgamma, dbeta,
              HAS_BETA: tl.constexpr, part, cols, um, w, u, n, nf):
    """∂L/∂x of :func:`_norm` given dy = ∂L/∂y (zero on padded rows); stores this program's
    partial sums of ∂L/∂γ and ∂L/∂β at ``part + cols``. BN with batch statistics (BATCH) carries
    the mean terms, with population statistics it does not."""
    if HAS_BETA:
        tl.store(dbeta + part + cols, tl.sum(dy, axis=0, keep_dims=True), mask=um)
    tl.store(dgamma + part + cols, tl.sum(dy * xh, axis=0, keep_dims=True), mask=um)
    d = dy * g
    if KIND == _BN:
        if BATCH:
            s1 = tl.sum(d * w, axis=0, keep_dims=True)
            s2 = tl.sum(d * xh * w, axis=0, keep_dims=True)
            dx = w * rstd * (d - (s1 + xh * s2) / n)
        else:
            dx = d * rstd
    else:
        s1 = _row_sum(d * u)
        s2 = _row_sum(d * xh * u)
        dx = u * rstd * (d - (s1 + xh * s2) / nf)
    return dx


@triton.jit
def _preactivation(r, p, off, tm, cols, rows, rm, um, w, u, n, nf, eps,
                   gamma_hh, beta_hh, mean_hh, var_hh, gamma_sum, beta_sum, mean_sum, var_sum,
                   HH: tl.constexpr, SUM: tl.constexpr, HAS_BETA_HH: tl.constexpr,
                   HAS_BETA_SUM: tl.constexpr, FWD: tl.constexpr, TRAIN: tl.constexpr,
                   F64: tl.constexpr):
    """a = N_sum(p + N_hh(r)) of the tile's G gates, and N_hh's and N_sum's x̂, rstd and γ for the
    backward (the inputs themselves where a slot is empty). A forward computes the statistics
    of LN, and of BN in training; everything else reads the saved ones."""
    x = _load(r + off, tm, F64)
    s, xh_hh, rstd_hh, g_hh = x, x, x, x
    if HH != 0:
        s, xh_hh, rstd_hh, g_hh = _norm(x, HH, FWD and (TRAIN or HH == _LN), mean_hh, var_hh,
                                        gamma_hh, beta_hh, HAS_BETA_HH, cols, rows, rm, um, w, u,
                                        n, nf, eps, F64)
    s += _load(p + off, tm, F64)
    a, xh_sum, rstd_sum, g_sum = s, s, s, s
    if SUM != 0:
        a, xh_sum, rstd_sum, g_sum = _norm(s, SUM, FWD and (TRAIN or SUM == _LN), mean_sum,
                                           var_sum, gamma_sum, beta_sum, HAS_BETA_SUM, cols, rows,
                                           rm, um, w, u, n, nf, eps, F64)
    return a, xh_hh, rstd_hh, g_hh, xh_sum, rstd_sum, g_sum


@triton.jit
def _gates(a, gate):
    """σ of the i, f, o pre-activations and tanh of g's, as k σ(k a) - (k - 1) with k = 2 on
    the g gate (tanh x = 2σ(2x) - 1): one sigmoid per element for all four."""
    k = tl.where(gate == 2, 2.0, 1.0)
    return k * tl.sigmoid(k * a) - (k - 1.0)


@triton.jit
def _pick(x, gate, k: tl.constexpr):
    """Gate k of a (BB, 4, BH) tile, as a (BB, 1, BH) tile."""
    return tl.sum(tl.where(gate == k, x, 0.0), axis=1, keep_dims=True)


@triton.jit
def _lstm_cell(act, gate, c_prev, tm_state, soff, F64: tl.constexpr):
    i = _pick(act, gate, 0)
    f = _pick(act, gate, 1)
    g = _pick(act, gate, 2)
    o = _pick(act, gate, 3)
    cp = _load(c_prev + soff, tm_state, F64)
    return i, f, g, o, cp, f * cp + i * g


# ------------------------------------------------------------------ the LSTM
@triton.heuristics(_flags("mask", "beta_hh", "beta_sum", "beta_cell"))
@triton.jit
def lstm_step_fwd(
    r, p, h_prev, c_prev, h_next, c_next, mask,
    gamma_hh, beta_hh, mean_hh, var_hh, gamma_sum, beta_sum, mean_sum, var_sum,
    gamma_cell, beta_cell, mean_cell, var_cell,
    B, H, eps,
    HH: tl.constexpr, SUM: tl.constexpr, CELL: tl.constexpr, TRAIN: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_BETA_HH: tl.constexpr, HAS_BETA_SUM: tl.constexpr,
    HAS_BETA_CELL: tl.constexpr, F64: tl.constexpr,
):
    """One LSTM step of M members (grid axis 2). r, p: (M, B, 4H) row-major; h_prev, c_prev
    (in), h_next, c_next (out): (M, B, H); mask: (M, B) int8 real frames or None; gamma_*/beta_*:
    (M, F) gains and shifts (None where absent); mean_*/var_*: the slot's statistics of this step
    (BN: (M, F) per feature, LN: (M, B) per row), written when computed, read otherwise."""
    member, row, units, cols, rm, um, real, w, u, n = _tile(mask, B, H, 4, HAS_MASK, F64, BLOCK_B, BLOCK_H)
    gate = tl.arange(0, 4)[None, :, None]
    off, soff, tm = _offsets(row, units, cols, rm, um, H, 4)
    a, _, _, _, _, _, _ = _preactivation(
        r, p, off, tm, member * 4 * H + cols, row, rm, um, w, u, n, 4 * H, eps,
        gamma_hh, beta_hh, mean_hh, var_hh, gamma_sum, beta_sum, mean_sum, var_sum,
        HH, SUM, HAS_BETA_HH, HAS_BETA_SUM, True, TRAIN, F64)
    i, f, g, o, cp, c = _lstm_cell(_gates(a, gate), gate, c_prev, tm, soff, F64)
    y = c
    if CELL != 0:
        y, _, _, _ = _norm(c, CELL, TRAIN or CELL == _LN, mean_cell, var_cell, gamma_cell,
                           beta_cell, HAS_BETA_CELL, member * H + units, row, rm, um, w, u, n, H,
                           eps, F64)
    h = tl.where(real, o * _tanh(y), _load(h_prev + soff, tm, F64))
    tl.store(h_next + soff, h, mask=tm)
    tl.store(c_next + soff, tl.where(real, c, cp), mask=tm)


@triton.heuristics(_flags("mask", "beta_hh", "beta_sum", "beta_cell"))
@triton.jit
def lstm_step_bwd(
    r, p, c_prev, mask, dh, dout, dc, dr, dp,
    gamma_hh, beta_hh, mean_hh, var_hh, gamma_sum, beta_sum, mean_sum, var_sum,
    gamma_cell, beta_cell, mean_cell, var_cell,
    dgamma_hh, dbeta_hh, dgamma_sum, dbeta_sum, dgamma_cell, dbeta_cell,
    B, H, eps,
    HH: tl.constexpr, SUM: tl.constexpr, CELL: tl.constexpr, TRAIN: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_BETA_HH: tl.constexpr, HAS_BETA_SUM: tl.constexpr,
    HAS_BETA_CELL: tl.constexpr, F64: tl.constexpr,
):
    """Backward of :func:`lstm_step_fwd` at one step.

    In: dh = ∂L/∂h_t (state), dout = ∂L/∂out_t, dc = ∂L/∂c_t (state), each (B, H).
    Out: dr = ∂L/∂r, dp = ∂L/∂p_t (M, B, 4H); in place: dc <- ∂L/∂c_{t-1} and dh <- the part of
    ∂L/∂h_{t-1} that skips the step on padded rows (the caller adds dr W_hh); dgamma_*, dbeta_*:
    this program's partial sums at row (m, program_id(0)) of an (M, programs, features) buffer."""
    member, row, units, cols, rm, um, real, w, u, n = _tile(mask, B, H, 4, HAS_MASK, F64, BLOCK_B, BLOCK_H)
    gate = tl.arange(0, 4)[None, :, None]
    off, soff, tm = _offsets(row, units, cols, rm, um, H, 4)
    part = _part(member, 4 * H)  # this program's row of the gate-feature partial sums
    a, xh_hh, rstd_hh, g_hh, xh_sum, rstd_sum, g_sum = _preactivation(
        r, p, off, tm, member * 4 * H + cols, row, rm, um, w, u, n, 4 * H, eps,
        gamma_hh, beta_hh, mean_hh, var_hh, gamma_sum, beta_sum, mean_sum, var_sum,
        HH, SUM, HAS_BETA_HH, HAS_BETA_SUM, False, TRAIN, F64)
    act = _gates(a, gate)
    i, f, g, o, cp, c = _lstm_cell(act, gate, c_prev, tm, soff, F64)
    y = c
    if CELL != 0:
        y, xh_cell, rstd_cell, g_cell = _norm(c, CELL, False, mean_cell, var_cell, gamma_cell,
                                              beta_cell, HAS_BETA_CELL, member * H + units, row,
                                              rm, um, w, u, n, H, eps, F64)
    ty = _tanh(y)

    dh_t = _load(dh + soff, tm, F64)
    dc_t = _load(dc + soff, tm, F64)
    dh_all = w * (dh_t + _load(dout + soff, tm, F64))
    do = dh_all * ty
    dcell = dh_all * o * (1.0 - ty * ty)
    if CELL != 0:
        dcell = _norm_bwd(dcell, xh_cell, rstd_cell, g_cell, CELL, TRAIN, dgamma_cell, dbeta_cell,
                          HAS_BETA_CELL, _part(member, H), units, um, w, u, n, H)
    dcell += w * dc_t
    tl.store(dc + soff, dcell * f + (1.0 - w) * dc_t, mask=tm)
    tl.store(dh + soff, (1.0 - w) * dh_t, mask=tm)
    # ∂L/∂(activated gate), then through σ (tanh on the g gate)
    dact = tl.where(gate == 0, dcell * g, tl.where(gate == 1, dcell * cp,
                                                   tl.where(gate == 2, dcell * i, do)))
    ds = tl.where(gate == 2, dact * (1.0 - act * act), dact * act * (1.0 - act))
    if SUM != 0:
        ds = _norm_bwd(ds, xh_sum, rstd_sum, g_sum, SUM, TRAIN, dgamma_sum, dbeta_sum,
                       HAS_BETA_SUM, part, cols, um, w, u, n, 4 * H)
    tl.store(dp + off, ds, mask=tm)
    if HH != 0:
        ds = _norm_bwd(ds, xh_hh, rstd_hh, g_hh, HH, TRAIN, dgamma_hh, dbeta_hh, HAS_BETA_HH,
                       part, cols, um, w, u, n, 4 * H)
    tl.store(dr + off, ds, mask=tm)


# ------------------------------------------------------------------ the tanh RNN (one gate)
@triton.jit
def _tanh_preactivation(r, p, mask, gamma_sum, beta_sum, mean_sum, var_sum, B, H, eps,
                        SUM: tl.constexpr, TRAIN: tl.constexpr, HAS_MASK: tl.constexpr,
                        HAS_BETA_SUM: tl.constexpr, FWD: tl.constexpr, F64: tl.constexpr,
                        BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """The tile of one tanh step and its a = N_sum(p + r), shared by the forward and the
    backward's recomputation: offsets, store mask, real rows, a, N_sum's x̂, rstd and γ, and
    what the backward's reduction needs (member, columns, unit mask, row weights, counts)."""
    member, row, units, cols, rm, um, real, w, u, n = _tile(mask, B, H, 1, HAS_MASK, F64, BLOCK_B, BLOCK_H)
    off, _, tm = _offsets(row, units, cols, rm, um, H, 1)
    a, _, _, _, xh_sum, rstd_sum, g_sum = _preactivation(
        r, p, off, tm, member * H + cols, row, rm, um, w, u, n, H, eps,
        None, None, None, None, gamma_sum, beta_sum, mean_sum, var_sum,
        0, SUM, False, HAS_BETA_SUM, FWD, TRAIN, F64)
    return off, tm, real, a, xh_sum, rstd_sum, g_sum, member, cols, um, w, u, n


@triton.heuristics(_flags("mask", "beta_sum"))
@triton.jit
def tanh_step_fwd(
    r, p, h_prev, h_next, mask, gamma_sum, beta_sum, mean_sum, var_sum,
    B, H, eps,
    SUM: tl.constexpr, TRAIN: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_BETA_SUM: tl.constexpr, F64: tl.constexpr,
):
    """One step of h_t = tanh(N_sum(p_t + r)), r, p: (M, B, H); N_sum none or BN (NormRNN's
    variants); arguments as :func:`lstm_step_fwd`'s."""
    off, tm, real, a, _, _, _, _, _, _, _, _, _ = _tanh_preactivation(
        r, p, mask, gamma_sum, beta_sum, mean_sum, var_sum, B, H, eps, SUM, TRAIN, HAS_MASK,
        HAS_BETA_SUM, True, F64, BLOCK_B, BLOCK_H)
    h = tl.where(real, _tanh(a), _load(h_prev + off, tm, F64))
    tl.store(h_next + off, h, mask=tm)


@triton.heuristics(_flags("mask", "beta_sum"))
@triton.jit
def tanh_step_bwd(
    r, p, mask, dh, dout, dr, dp, gamma_sum, beta_sum, mean_sum, var_sum, dgamma_sum, dbeta_sum,
    B, H, eps,
    SUM: tl.constexpr, TRAIN: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_BETA_SUM: tl.constexpr, F64: tl.constexpr,
):
    """Backward of :func:`tanh_step_fwd`: dr = dp = ∂L/∂(p_t + r) (M, B, H); in place dh <- the
    part of ∂L/∂h_{t-1} that skips padded rows; partial sums as :func:`lstm_step_bwd`'s."""
    off, tm, _, a, xh_sum, rstd_sum, g_sum, member, cols, um, w, u, n = _tanh_preactivation(
        r, p, mask, gamma_sum, beta_sum, mean_sum, var_sum, B, H, eps, SUM, TRAIN, HAS_MASK,
        HAS_BETA_SUM, False, F64, BLOCK_B, BLOCK_H)
    h = _tanh(a)
    dh_t = _load(dh + off, tm, F64)
    ds = w * (dh_t + _load(dout + off, tm, F64)) * (1.0 - h * h)
    if SUM != 0:
        ds = _norm_bwd(ds, xh_sum, rstd_sum, g_sum, SUM, TRAIN, dgamma_sum, dbeta_sum,
                       HAS_BETA_SUM, _part(member, H), cols, um, w, u, n, H)
    tl.store(dp + off, ds, mask=tm)
    tl.store(dr + off, ds, mask=tm)
    tl.store(dh + off, (1.0 - w) * dh_t, mask=tm)
