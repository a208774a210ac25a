"""Triton kernels: one LSTM time step with its normalizations, forward and backward.

A step of the recurrence is two launches: the recurrent product ``R = h_{t-1} W_hh^T`` (cuBLAS)
and :func:`lstm_step_fwd`, which does everything else of the step in one pass over the
(B, 4H) pre-activations: the normalization of ``R`` (N_hh), the sum with the hoisted input term
``P_t = N_ih(W_x x_t) + b``, the normalization of the sum (N_sum), the gates, the cell, its
normalization (N_cell), the output and the masked state update. Batch statistics of a time step
are reductions inside one program: a program owns a tile of rows (batch) x hidden units and
reads the four gate columns i, f, g, o of each unit, so

- BN (statistics over the batch) needs the tile to hold every row: ``BLOCK_B >= B``;
- LN (statistics over the features of a row) needs every unit: ``BLOCK_H >= H``.

:func:`lstm_step_bwd` recomputes the step from ``R``, ``P_t``, ``c_{t-1}`` and the saved
statistics, and writes the gradients of ``R`` and ``P_t``, the gradient carried to ``c_{t-1}``,
the part of the ``h`` gradient that padding passes through, and per-program partial sums for
the gains and shifts. Slot kinds: 0 none, 1 batch norm, 2 layer norm. Arithmetic is float32
(float64 for float64 inputs); statistics follow ``bnrnn.nn.norms`` exactly.
"""
from __future__ import annotations

import triton
import triton.language as tl

NONE, BN, LN = 0, 1, 2


@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _load(ptr, mask, F64: tl.constexpr):
    x = tl.load(ptr, mask=mask, other=0.0)
    if F64:
        return x.to(tl.float64)
    return x.to(tl.float32)


@triton.jit
def _tile(M, B, H, HAS_MASK: tl.constexpr, F64: tl.constexpr, BLOCK_B: tl.constexpr,
          BLOCK_H: tl.constexpr):
    """This program's tile: rows (batch) x hidden units, their bounds masks rm, um and tm, the
    real-frame rows (mask M, int8), and as floats w (BB, 1) = real rows, u (1, BH) = real units,
    n = the number of real rows (at least 1)."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    units = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    rm, um = rows < B, units < H
    tm = rm[:, None] & um[None, :]
    if HAS_MASK:
        real = (tl.load(M + rows, mask=rm, other=0) != 0) & rm
    else:
        real = rm
    if F64:
        w = real.to(tl.float64)[:, None]
        u = um.to(tl.float64)[None, :]
    else:
        w = real.to(tl.float32)[:, None]
        u = um.to(tl.float32)[None, :]
    n = tl.maximum(tl.sum(w, axis=0), 1.0)
    return rows, units, rm, um, tm, real, w, u, n


# ------------------------------------------------------------------ normalization pieces
@triton.jit
def _bn_stats(x, w, n, cols, cm, MEAN, VAR, COMPUTE: tl.constexpr, F64: tl.constexpr):
    """Per-column mean/var of x (BB, BH) over the real rows (w (BB, 1) is 1 on them, n = Σw):
    computed and stored (training forward) or loaded (evaluation, and every backward)."""
    if COMPUTE:
        mean = tl.sum(x * w, axis=0) / n
        d = (x - mean[None, :]) * w
        var = tl.sum(d * d, axis=0) / n
        tl.store(MEAN + cols, mean, mask=cm)
        tl.store(VAR + cols, var, mask=cm)
    else:
        mean = _load(MEAN + cols, cm, F64)
        var = _load(VAR + cols, cm, F64)
    return mean, var


@triton.jit
def _ln_stats(x0, x1, x2, x3, u, nf, rows, rm, MEAN, VAR, COMPUTE: tl.constexpr,
              F64: tl.constexpr, GATES: tl.constexpr):
    """Per-row mean/var over the features of GATES tiles (BB, BH) (u (1, BH) is 1 on real
    units, nf the number of features)."""
    if COMPUTE:
        s = tl.sum(x0 * u, axis=1)
        if GATES == 4:
            s += tl.sum(x1 * u, axis=1) + tl.sum(x2 * u, axis=1) + tl.sum(x3 * u, axis=1)
        mean = s / nf
        d0 = (x0 - mean[:, None]) * u
        q = tl.sum(d0 * d0, axis=1)
        if GATES == 4:
            d1 = (x1 - mean[:, None]) * u
            d2 = (x2 - mean[:, None]) * u
            d3 = (x3 - mean[:, None]) * u
            q += tl.sum(d1 * d1, axis=1) + tl.sum(d2 * d2, axis=1) + tl.sum(d3 * d3, axis=1)
        var = q / nf
        tl.store(MEAN + rows, mean, mask=rm)
        tl.store(VAR + rows, var, mask=rm)
    else:
        mean = _load(MEAN + rows, rm, F64)
        var = _load(VAR + rows, rm, F64)
    return mean, var


@triton.jit
def _bn_bwd(dxh, xh, w, n, rstd, BATCH: tl.constexpr):
    """Gradient wrt x of x̂ = (x - mean) * rstd, given dxh = ∂L/∂x̂ (zero on padded rows):
    batch statistics (BATCH) carry the mean terms, population statistics do not."""
    if BATCH:
        s1 = tl.sum(dxh * w, axis=0)
        s2 = tl.sum(dxh * xh * w, axis=0)
        return w * rstd[None, :] * (dxh - (s1[None, :] + xh * s2[None, :]) / n)
    return dxh * rstd[None, :]


@triton.jit
def _ln_sums(d0, d1, d2, d3, x0, x1, x2, x3, u, GATES: tl.constexpr):
    s1 = tl.sum(d0 * u, axis=1)
    s2 = tl.sum(d0 * x0 * u, axis=1)
    if GATES == 4:
        s1 += tl.sum(d1 * u, axis=1) + tl.sum(d2 * u, axis=1) + tl.sum(d3 * u, axis=1)
        s2 += tl.sum(d1 * x1 * u, axis=1) + tl.sum(d2 * x2 * u, axis=1) + tl.sum(d3 * x3 * u, axis=1)
    return s1, s2


@triton.jit
def _ln_bwd(d, xh, s1, s2, u, nf, rstd):
    return u * rstd[:, None] * (d - (s1[:, None] + xh * s2[:, None]) / nf)


# ------------------------------------------------------------------ one gate tile
@triton.jit
def _gate_pre(R, P, off, tm, k, H, units, um, w, n, rows, rm,
              GHH, BHH, MHH, VHH, GS, BS, MS, VS, eps,
              HH: tl.constexpr, SUM: tl.constexpr, HAS_BHH: tl.constexpr, HAS_BS: tl.constexpr,
              TRAIN: tl.constexpr, F64: tl.constexpr):
    """Pre-activation a = N_sum(P + N_hh(R)) of gate k for a BN or unnormalized N_hh
    (LN of R needs all four gates at once and is handled by the caller)."""
    r = _load(R + off + k * H, tm, F64)
    p = _load(P + off + k * H, tm, F64)
    cols = k * H + units
    if HH == 1:
        mean, var = _bn_stats(r, w, n, cols, um, MHH, VHH, TRAIN, F64)
        r = (r - mean[None, :]) / tl.sqrt(var[None, :] + eps) * _load(GHH + cols, um, F64)[None, :]
        if HAS_BHH:
            r += _load(BHH + cols, um, F64)[None, :]
    s = p + r
    if SUM == 1:
        mean, var = _bn_stats(s, w, n, cols, um, MS, VS, TRAIN, F64)
        s = (s - mean[None, :]) / tl.sqrt(var[None, :] + eps) * _load(GS + cols, um, F64)[None, :]
        if HAS_BS:
            s += _load(BS + cols, um, F64)[None, :]
    return s


@triton.jit
def lstm_step_fwd(
    R, P, HP, CP, HN, CN, M,
    GHH, BHH, MHH, VHH, GS, BS, MS, VS, GC, BC, MC, VC,
    B, H, eps,
    HH: tl.constexpr, SUM: tl.constexpr, CELL: tl.constexpr,
    HAS_BHH: tl.constexpr, HAS_BS: tl.constexpr, HAS_BC: tl.constexpr,
    TRAIN: tl.constexpr, HAS_MASK: tl.constexpr, F64: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """One LSTM step. R, P: (B, 4H) row-major; HP, CP (in) and HN, CN (out): (B, H);
    M: (B,) int8 real-frame mask; G*/B*: gains/shifts; M*/V*: the slot's statistics of this
    step (BN: per feature, LN: per row) — written when computed, read otherwise."""
    rows, units, rm, um, tm, real, w, u, n = _tile(M, B, H, HAS_MASK, F64, BLOCK_B, BLOCK_H)
    off = rows[:, None] * (4 * H) + units[None, :]
    if HH == 2:  # LN over the 4H features of W_h h: all four gates first
        r0 = _load(R + off, tm, F64)
        r1 = _load(R + off + H, tm, F64)
        r2 = _load(R + off + 2 * H, tm, F64)
        r3 = _load(R + off + 3 * H, tm, F64)
        mean, var = _ln_stats(r0, r1, r2, r3, u, 4 * H, rows, rm, MHH, VHH, True, F64, 4)
        rstd = (1.0 / tl.sqrt(var + eps))[:, None]
        a_i = _load(P + off, tm, F64) + (r0 - mean[:, None]) * rstd * _load(GHH + units, um, F64)[None, :]
        a_f = _load(P + off + H, tm, F64) + (r1 - mean[:, None]) * rstd * _load(GHH + H + units, um, F64)[None, :]
        a_g = _load(P + off + 2 * H, tm, F64) + (r2 - mean[:, None]) * rstd * _load(GHH + 2 * H + units, um, F64)[None, :]
        a_o = _load(P + off + 3 * H, tm, F64) + (r3 - mean[:, None]) * rstd * _load(GHH + 3 * H + units, um, F64)[None, :]
        if HAS_BHH:
            a_i += _load(BHH + units, um, F64)[None, :]
            a_f += _load(BHH + H + units, um, F64)[None, :]
            a_g += _load(BHH + 2 * H + units, um, F64)[None, :]
            a_o += _load(BHH + 3 * H + units, um, F64)[None, :]
    else:
        a_i = _gate_pre(R, P, off, tm, 0, H, units, um, w, n, rows, rm, GHH, BHH, MHH, VHH,
                        GS, BS, MS, VS, eps, HH, SUM, HAS_BHH, HAS_BS, TRAIN, F64)
        a_f = _gate_pre(R, P, off, tm, 1, H, units, um, w, n, rows, rm, GHH, BHH, MHH, VHH,
                        GS, BS, MS, VS, eps, HH, SUM, HAS_BHH, HAS_BS, TRAIN, F64)
        a_g = _gate_pre(R, P, off, tm, 2, H, units, um, w, n, rows, rm, GHH, BHH, MHH, VHH,
                        GS, BS, MS, VS, eps, HH, SUM, HAS_BHH, HAS_BS, TRAIN, F64)
        a_o = _gate_pre(R, P, off, tm, 3, H, units, um, w, n, rows, rm, GHH, BHH, MHH, VHH,
                        GS, BS, MS, VS, eps, HH, SUM, HAS_BHH, HAS_BS, TRAIN, F64)
    i = tl.sigmoid(a_i)
    f = tl.sigmoid(a_f)
    g = _tanh(a_g)
    o = tl.sigmoid(a_o)
    soff = rows[:, None] * H + units[None, :]
    c_prev = _load(CP + soff, tm, F64)
    c = f * c_prev + i * g
    y = c
    if CELL == 1:
        mean, var = _bn_stats(c, w, n, units, um, MC, VC, TRAIN, F64)
        y = (c - mean[None, :]) / tl.sqrt(var[None, :] + eps) * _load(GC + units, um, F64)[None, :]
    if CELL == 2:
        mean, var = _ln_stats(c, c, c, c, u, H, rows, rm, MC, VC, True, F64, 1)
        y = (c - mean[:, None]) / tl.sqrt(var[:, None] + eps) * _load(GC + units, um, F64)[None, :]
    if HAS_BC:
        y += _load(BC + units, um, F64)[None, :]
    h = o * _tanh(y)
    keep = real[:, None]
    h = tl.where(keep, h, _load(HP + soff, tm, F64))
    c = tl.where(keep, c, c_prev)
    tl.store(HN + soff, h, mask=tm)
    tl.store(CN + soff, c, mask=tm)


@triton.jit
def lstm_step_bwd(
    R, P, CP, M, GH, GO, GC_, DR, DP,
    GHH, BHH, MHH, VHH, GS, BS, MS, VS, GC, BC, MC, VC,
    DGHH, DBHH, DGS, DBS, DGC, DBC,
    B, H, eps,
    HH: tl.constexpr, SUM: tl.constexpr, CELL: tl.constexpr,
    HAS_BHH: tl.constexpr, HAS_BS: tl.constexpr, HAS_BC: tl.constexpr,
    TRAIN: tl.constexpr, HAS_MASK: tl.constexpr, F64: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """Backward of :func:`lstm_step_fwd` at one step.

    In: GH = ∂L/∂h_t (state), GO = ∂L/∂out_t, GC_ = ∂L/∂c_t (state), each (B, H).
    Out: DR = ∂L/∂R, DP = ∂L/∂P_t (B, 4H); in place: GC_ <- ∂L/∂c_{t-1} and GH <- the part
    of ∂L/∂h_{t-1} that skips the step on padded rows (the caller adds DR W_hh); the gain/shift
    partial sums D* of this program's rows at [program_id(0), feature]."""
    pid_b = tl.program_id(0)
    rows, units, rm, um, tm, real, w, u, n = _tile(M, B, H, HAS_MASK, F64, BLOCK_B, BLOCK_H)
    off = rows[:, None] * (4 * H) + units[None, :]
    soff = rows[:, None] * H + units[None, :]
    pb = pid_b * 4 * H  # row of the gate-feature partial sums
    pc = pid_b * H      # row of the cell-feature partial sums

    # ---- recompute the step from the saved statistics
    r0 = _load(R + off, tm, F64)
    r1 = _load(R + off + H, tm, F64)
    r2 = _load(R + off + 2 * H, tm, F64)
    r3 = _load(R + off + 3 * H, tm, F64)
    if HH == 1:
        m0, v0 = _bn_stats(r0, w, n, units, um, MHH, VHH, False, F64)
        m1, v1 = _bn_stats(r1, w, n, H + units, um, MHH, VHH, False, F64)
        m2, v2 = _bn_stats(r2, w, n, 2 * H + units, um, MHH, VHH, False, F64)
        m3, v3 = _bn_stats(r3, w, n, 3 * H + units, um, MHH, VHH, False, F64)
        q0 = 1.0 / tl.sqrt(v0 + eps)
        q1 = 1.0 / tl.sqrt(v1 + eps)
        q2 = 1.0 / tl.sqrt(v2 + eps)
        q3 = 1.0 / tl.sqrt(v3 + eps)
        x0 = (r0 - m0[None, :]) * q0[None, :]
        x1 = (r1 - m1[None, :]) * q1[None, :]
        x2 = (r2 - m2[None, :]) * q2[None, :]
        x3 = (r3 - m3[None, :]) * q3[None, :]
    if HH == 2:
        mr, vr = _ln_stats(r0, r1, r2, r3, u, 4 * H, rows, rm, MHH, VHH, False, F64, 4)
        qr = 1.0 / tl.sqrt(vr + eps)
        x0 = (r0 - mr[:, None]) * qr[:, None]
        x1 = (r1 - mr[:, None]) * qr[:, None]
        x2 = (r2 - mr[:, None]) * qr[:, None]
        x3 = (r3 - mr[:, None]) * qr[:, None]
    if HH != 0:
        g0 = _load(GHH + units, um, F64)[None, :]
        g1 = _load(GHH + H + units, um, F64)[None, :]
        g2 = _load(GHH + 2 * H + units, um, F64)[None, :]
        g3 = _load(GHH + 3 * H + units, um, F64)[None, :]
        s0, s1, s2, s3 = x0 * g0, x1 * g1, x2 * g2, x3 * g3
        if HAS_BHH:
            s0 += _load(BHH + units, um, F64)[None, :]
            s1 += _load(BHH + H + units, um, F64)[None, :]
            s2 += _load(BHH + 2 * H + units, um, F64)[None, :]
            s3 += _load(BHH + 3 * H + units, um, F64)[None, :]
    else:
        s0, s1, s2, s3 = r0, r1, r2, r3
    s0 += _load(P + off, tm, F64)
    s1 += _load(P + off + H, tm, F64)
    s2 += _load(P + off + 2 * H, tm, F64)
    s3 += _load(P + off + 3 * H, tm, F64)
    if SUM == 1:
        ms0, vs0 = _bn_stats(s0, w, n, units, um, MS, VS, False, F64)
        ms1, vs1 = _bn_stats(s1, w, n, H + units, um, MS, VS, False, F64)
        ms2, vs2 = _bn_stats(s2, w, n, 2 * H + units, um, MS, VS, False, F64)
        ms3, vs3 = _bn_stats(s3, w, n, 3 * H + units, um, MS, VS, False, F64)
        qs0 = 1.0 / tl.sqrt(vs0 + eps)
        qs1 = 1.0 / tl.sqrt(vs1 + eps)
        qs2 = 1.0 / tl.sqrt(vs2 + eps)
        qs3 = 1.0 / tl.sqrt(vs3 + eps)
        z0 = (s0 - ms0[None, :]) * qs0[None, :]
        z1 = (s1 - ms1[None, :]) * qs1[None, :]
        z2 = (s2 - ms2[None, :]) * qs2[None, :]
        z3 = (s3 - ms3[None, :]) * qs3[None, :]
        e0 = _load(GS + units, um, F64)[None, :]
        e1 = _load(GS + H + units, um, F64)[None, :]
        e2 = _load(GS + 2 * H + units, um, F64)[None, :]
        e3 = _load(GS + 3 * H + units, um, F64)[None, :]
        a0, a1, a2, a3 = z0 * e0, z1 * e1, z2 * e2, z3 * e3
        if HAS_BS:
            a0 += _load(BS + units, um, F64)[None, :]
            a1 += _load(BS + H + units, um, F64)[None, :]
            a2 += _load(BS + 2 * H + units, um, F64)[None, :]
            a3 += _load(BS + 3 * H + units, um, F64)[None, :]
    else:
        a0, a1, a2, a3 = s0, s1, s2, s3
    i = tl.sigmoid(a0)
    f = tl.sigmoid(a1)
    g = _tanh(a2)
    o = tl.sigmoid(a3)
    c_prev = _load(CP + soff, tm, F64)
    c = f * c_prev + i * g
    if CELL == 1:
        mc, vc = _bn_stats(c, w, n, units, um, MC, VC, False, F64)
        qc = 1.0 / tl.sqrt(vc + eps)
        xc = (c - mc[None, :]) * qc[None, :]
    if CELL == 2:
        mc, vc = _ln_stats(c, c, c, c, u, H, rows, rm, MC, VC, False, F64, 1)
        qc = 1.0 / tl.sqrt(vc + eps)
        xc = (c - mc[:, None]) * qc[:, None]
    if CELL != 0:
        gc = _load(GC + units, um, F64)[None, :]
        y = xc * gc
    else:
        y = c
    if HAS_BC:
        y += _load(BC + units, um, F64)[None, :]
    ty = _tanh(y)

    # ---- backward
    gh = _load(GH + soff, tm, F64)
    gcs = _load(GC_ + soff, tm, F64)
    dh = w * (gh + _load(GO + soff, tm, F64))
    do = dh * ty
    dy = dh * o * (1.0 - ty * ty)
    if HAS_BC:
        tl.store(DBC + pc + units, tl.sum(dy, axis=0), mask=um)
    if CELL != 0:
        tl.store(DGC + pc + units, tl.sum(dy * xc, axis=0), mask=um)
        dxc = dy * gc
        if CELL == 1:
            dc = _bn_bwd(dxc, xc, w, n, qc, TRAIN)
        else:
            t1, t2 = _ln_sums(dxc, dxc, dxc, dxc, xc, xc, xc, xc, u, 1)
            dc = _ln_bwd(dxc, xc, t1, t2, u, H, qc)
    else:
        dc = dy
    dc += w * gcs
    tl.store(GC_ + soff, dc * f + (1.0 - w) * gcs, mask=tm)
    tl.store(GH + soff, (1.0 - w) * gh, mask=tm)
    da0 = dc * g * i * (1.0 - i)
    da1 = dc * c_prev * f * (1.0 - f)
    da2 = dc * i * (1.0 - g * g)
    da3 = do * o * (1.0 - o)
    if SUM == 1:
        if HAS_BS:
            tl.store(DBS + pb + units, tl.sum(da0, axis=0), mask=um)
            tl.store(DBS + pb + H + units, tl.sum(da1, axis=0), mask=um)
            tl.store(DBS + pb + 2 * H + units, tl.sum(da2, axis=0), mask=um)
            tl.store(DBS + pb + 3 * H + units, tl.sum(da3, axis=0), mask=um)
        tl.store(DGS + pb + units, tl.sum(da0 * z0, axis=0), mask=um)
        tl.store(DGS + pb + H + units, tl.sum(da1 * z1, axis=0), mask=um)
        tl.store(DGS + pb + 2 * H + units, tl.sum(da2 * z2, axis=0), mask=um)
        tl.store(DGS + pb + 3 * H + units, tl.sum(da3 * z3, axis=0), mask=um)
        ds0 = _bn_bwd(da0 * e0, z0, w, n, qs0, TRAIN)
        ds1 = _bn_bwd(da1 * e1, z1, w, n, qs1, TRAIN)
        ds2 = _bn_bwd(da2 * e2, z2, w, n, qs2, TRAIN)
        ds3 = _bn_bwd(da3 * e3, z3, w, n, qs3, TRAIN)
    else:
        ds0, ds1, ds2, ds3 = da0, da1, da2, da3
    tl.store(DP + off, ds0, mask=tm)
    tl.store(DP + off + H, ds1, mask=tm)
    tl.store(DP + off + 2 * H, ds2, mask=tm)
    tl.store(DP + off + 3 * H, ds3, mask=tm)
    if HH != 0:
        if HAS_BHH:
            tl.store(DBHH + pb + units, tl.sum(ds0, axis=0), mask=um)
            tl.store(DBHH + pb + H + units, tl.sum(ds1, axis=0), mask=um)
            tl.store(DBHH + pb + 2 * H + units, tl.sum(ds2, axis=0), mask=um)
            tl.store(DBHH + pb + 3 * H + units, tl.sum(ds3, axis=0), mask=um)
        tl.store(DGHH + pb + units, tl.sum(ds0 * x0, axis=0), mask=um)
        tl.store(DGHH + pb + H + units, tl.sum(ds1 * x1, axis=0), mask=um)
        tl.store(DGHH + pb + 2 * H + units, tl.sum(ds2 * x2, axis=0), mask=um)
        tl.store(DGHH + pb + 3 * H + units, tl.sum(ds3 * x3, axis=0), mask=um)
        d0, d1, d2, d3 = ds0 * g0, ds1 * g1, ds2 * g2, ds3 * g3
        if HH == 1:
            d0 = _bn_bwd(d0, x0, w, n, q0, TRAIN)
            d1 = _bn_bwd(d1, x1, w, n, q1, TRAIN)
            d2 = _bn_bwd(d2, x2, w, n, q2, TRAIN)
            d3 = _bn_bwd(d3, x3, w, n, q3, TRAIN)
        else:
            t1, t2 = _ln_sums(d0, d1, d2, d3, x0, x1, x2, x3, u, 4)
            d0 = _ln_bwd(d0, x0, t1, t2, u, 4 * H, qr)
            d1 = _ln_bwd(d1, x1, t1, t2, u, 4 * H, qr)
            d2 = _ln_bwd(d2, x2, t1, t2, u, 4 * H, qr)
            d3 = _ln_bwd(d3, x3, t1, t2, u, 4 * H, qr)
    else:
        d0, d1, d2, d3 = ds0, ds1, ds2, ds3
    tl.store(DR + off, d0, mask=tm)
    tl.store(DR + off + H, d1, mask=tm)
    tl.store(DR + off + 2 * H, d2, mask=tm)
    tl.store(DR + off + 3 * H, d3, mask=tm)


# ------------------------------------------------------------------ the tanh RNN (one gate)
@triton.jit
def tanh_step_fwd(
    R, P, HP, CP, HN, CN, M,
    GHH, BHH, MHH, VHH, GS, BS, MS, VS, GC, BC, MC, VC,
    B, H, eps,
    HH: tl.constexpr, SUM: tl.constexpr, CELL: tl.constexpr,
    HAS_BHH: tl.constexpr, HAS_BS: tl.constexpr, HAS_BC: tl.constexpr,
    TRAIN: tl.constexpr, HAS_MASK: tl.constexpr, F64: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """One step of h_t = tanh(N_sum(P_t + N_hh(R))), the signature of :func:`lstm_step_fwd`
    (R, P: (B, H); the cell arguments are unused); N_sum: none or BN (NormRNN's variants)."""
    tl.static_assert(HH == 0 and CELL == 0)
    rows, units, rm, um, tm, real, w, u, n = _tile(M, B, H, HAS_MASK, F64, BLOCK_B, BLOCK_H)
    off = rows[:, None] * H + units[None, :]
    a = _gate_pre(R, P, off, tm, 0, H, units, um, w, n, rows, rm, GHH, BHH, MHH, VHH,
                  GS, BS, MS, VS, eps, HH, SUM, HAS_BHH, HAS_BS, TRAIN, F64)
    h = tl.where(real[:, None], _tanh(a), _load(HP + off, tm, F64))
    tl.store(HN + off, h, mask=tm)


@triton.jit
def tanh_step_bwd(
    R, P, CP, M, GH, GO, GC_, DR, DP,
    GHH, BHH, MHH, VHH, GS, BS, MS, VS, GC, BC, MC, VC,
    DGHH, DBHH, DGS, DBS, DGC, DBC,
    B, H, eps,
    HH: tl.constexpr, SUM: tl.constexpr, CELL: tl.constexpr,
    HAS_BHH: tl.constexpr, HAS_BS: tl.constexpr, HAS_BC: tl.constexpr,
    TRAIN: tl.constexpr, HAS_MASK: tl.constexpr, F64: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """Backward of :func:`tanh_step_fwd` (the signature of :func:`lstm_step_bwd`; R, P, DR, DP
    are (B, H)). In place: GH <- the part of ∂L/∂h_{t-1} that skips padded rows."""
    tl.static_assert(HH == 0 and CELL == 0)
    pid_b = tl.program_id(0)
    rows, units, rm, um, tm, real, w, u, n = _tile(M, B, H, HAS_MASK, F64, BLOCK_B, BLOCK_H)
    off = rows[:, None] * H + units[None, :]
    pb = pid_b * H
    s = _load(R + off, tm, F64) + _load(P + off, tm, F64)
    if SUM == 1:
        ms, vs = _bn_stats(s, w, n, units, um, MS, VS, False, F64)
        qs = 1.0 / tl.sqrt(vs + eps)
        z = (s - ms[None, :]) * qs[None, :]
        e = _load(GS + units, um, F64)[None, :]
        a = z * e
        if HAS_BS:
            a += _load(BS + units, um, F64)[None, :]
    else:
        a = s
    h = _tanh(a)
    gh = _load(GH + off, tm, F64)
    da = w * (gh + _load(GO + off, tm, F64)) * (1.0 - h * h)
    if SUM == 1:
        if HAS_BS:
            tl.store(DBS + pb + units, tl.sum(da, axis=0), mask=um)
        tl.store(DGS + pb + units, tl.sum(da * z, axis=0), mask=um)
        ds = _bn_bwd(da * e, z, w, n, qs, TRAIN)
    else:
        ds = da
    tl.store(DP + off, ds, mask=tm)
    tl.store(DR + off, ds, mask=tm)
    tl.store(GH + off, (1.0 - w) * gh, mask=tm)
