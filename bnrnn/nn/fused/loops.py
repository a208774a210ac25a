"""Host side of the fused recurrences (LSTM and tanh RNN): time loops, autograd, CUDA graphs.

Forward, for t = 0 .. T-1 (two launches per step)::

    R[t] = Hs[t] @ W_hh^T                                      cuBLAS
    Hs[t+1], Cs[t+1] = step(R[t], P[t], Hs[t], Cs[t])          kernels.lstm_step_fwd (tanh_step_fwd)

Backward, for t = T-1 .. 0::

    DR[t], DP[t], GC, GH = step_bwd(R[t], P[t], Cs[t], GH, GO[t], GC)   kernels.lstm_step_bwd
    GH += DR[t] @ W_hh                                                  cuBLAS
    then ∂W_hh = Σ_t DR[t]^T Hs[t] in one GEMM over all steps.

The loops are pure functions of tensors, so :class:`GraphCache` can capture each one as a CUDA
graph the second time a shape is seen and replay it after that (no per-step launch cost).
"""
from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor

from bnrnn.nn.fused import kernels

SAVED = ("p", "Hs", "Cs", "R", "W", "mask", "g_hh", "b_hh", "g_s", "b_s", "g_c", "b_c",
         "m_hh", "v_hh", "m_s", "v_s", "m_c", "v_c")


@dataclass(frozen=True)
class Plan:
    """Everything static about one call of the recurrence (also the CUDA-graph cache key)."""

    gates: int       # 4: LSTM (state h, c), 1: tanh RNN (state h)
    hh: int          # slot kinds: 0 none, 1 BN, 2 LN
    sum: int
    cell: int
    train: bool      # BN uses batch statistics (and saves them) rather than population ones
    has_mask: bool
    f64: bool
    eps: float
    block_b: int
    block_h: int
    num_warps: int

    def constexprs(self, b_hh: Tensor | None, b_s: Tensor | None, b_c: Tensor | None) -> dict:
        return dict(HH=self.hh, SUM=self.sum, CELL=self.cell, HAS_BHH=b_hh is not None,
                    HAS_BS=b_s is not None, HAS_BC=b_c is not None, TRAIN=self.train,
                    HAS_MASK=self.has_mask, F64=self.f64, BLOCK_B=self.block_b,
                    BLOCK_H=self.block_h, num_warps=self.num_warps)


def make_plan(hh: int, sum_: int, cell: int, *, B: int, H: int, train: bool, has_mask: bool,
              f64: bool, eps: float, gates: int = 4) -> Plan:
    """Tile shapes: BN needs every row of the batch in a program, LN every hidden unit."""
    if hh == kernels.LN and sum_ != kernels.NONE:
        raise ValueError("fused recurrence: a normalized sum after a layer-normalized W_h h is not supported")
    pow2 = lambda n: 1 << max(0, (n - 1).bit_length())  # noqa: E731
    bn = kernels.BN in (hh, sum_, cell)
    ln = kernels.LN in (hh, sum_, cell)
    if bn and ln:
        raise ValueError("fused recurrence: batch and layer norm in one layer are not supported")
    if bn:
        block_b = pow2(B)
        if block_b > 1024:
            raise ValueError(f"fused recurrence: batch normalization inside it needs B <= 1024; got B={B}")
        block_h = max(1, min(pow2(H), 1024 // block_b))
    elif ln:
        block_h = pow2(H)
        block_b = max(1, min(pow2(B), 2048 // block_h))
    else:
        block_b, block_h = min(pow2(B), 16), min(pow2(H), 64)
    num_warps = 8 if block_b * block_h >= 2048 else 4
    if gates == 1 and (hh != kernels.NONE or cell != kernels.NONE):
        raise ValueError("fused tanh RNN: only the summed pre-activation may be normalized")
    return Plan(gates, hh, sum_, cell, train, has_mask, f64, eps, block_b, block_h, num_warps)


def _grid(plan: Plan, B: int, H: int) -> tuple[int, int]:
    return (-(-B // plan.block_b), -(-H // plan.block_h))


def _step(buf: Tensor | None, t: int) -> Tensor | None:
    return None if buf is None else buf[t]


def _ptr(x: Tensor | None, like: Tensor) -> Tensor:
    """Triton needs a tensor for every pointer argument; unused ones get ``like``."""
    return like if x is None else x


# ------------------------------------------------------------------ the loops (pure functions)
def forward_loop(plan: Plan, inp: dict[str, Tensor | None]) -> dict[str, Tensor | None]:
    """inp: p (T, B, 4H), h0, c0 (B, H), W (4H, H), mask (T, B) int8 or None, gains/shifts,
    and in evaluation the population statistics m_*, v_* (T, F) of the BN slots.
    Returns Hs, Cs (T+1, B, H), R (T, B, 4H) and the statistics of every normalized slot
    (BN: (T, F) per feature; LN: (T, B) per row)."""
    p, W, mask = inp["p"], inp["W"], inp["mask"]
    T, B, G = p.shape
    H = G // plan.gates
    acc = torch.float64 if plan.f64 else torch.float32
    Hs = p.new_empty(T + 1, B, H)
    Hs[0].copy_(inp["h0"])
    Cs = None
    if plan.gates == 4:
        Cs = torch.empty(T + 1, B, H, dtype=acc, device=p.device)
        Cs[0].copy_(inp["c0"])
    R = torch.empty_like(p)
    out = {"Hs": Hs, "Cs": Cs, "R": R}
    for slot, kind, F in (("hh", plan.hh, G), ("s", plan.sum, G), ("c", plan.cell, H)):
        if kind == kernels.LN or (kind == kernels.BN and plan.train):
            shape = (T, B) if kind == kernels.LN else (T, F)
            out["m_" + slot] = torch.empty(shape, dtype=acc, device=p.device)
            out["v_" + slot] = torch.empty(shape, dtype=acc, device=p.device)
        else:  # population statistics (evaluation) or no statistic
            out["m_" + slot], out["v_" + slot] = inp.get("m_" + slot), inp.get("v_" + slot)
    const = plan.constexprs(inp["b_hh"], inp["b_s"], inp["b_c"])
    grid = _grid(plan, B, H)
    Wt = W.t()
    step = kernels.lstm_step_fwd if plan.gates == 4 else kernels.tanh_step_fwd
    for t in range(T):
        torch.mm(Hs[t], Wt, out=R[t])
        step[grid](
            R[t], p[t], Hs[t], _ptr(_step(Cs, t), p), Hs[t + 1], _ptr(_step(Cs, t + 1), p),
            _ptr(_step(mask, t), p),
            *(_ptr(inp[k], p) for k in ("g_hh", "b_hh")),
            *(_ptr(_step(out[k], t), p) for k in ("m_hh", "v_hh")),
            *(_ptr(inp[k], p) for k in ("g_s", "b_s")),
            *(_ptr(_step(out[k], t), p) for k in ("m_s", "v_s")),
            *(_ptr(inp[k], p) for k in ("g_c", "b_c")),
            *(_ptr(_step(out[k], t), p) for k in ("m_c", "v_c")),
            B, H, plan.eps, **const)
    return out


def backward_loop(plan: Plan, s: dict[str, Tensor | None]) -> dict[str, Tensor | None]:
    """s: the saved forward tensors (SAVED) and the incoming gradients GO (T, B, H), GH, GC
    (B, H). Returns dp (T, B, G*H), dW (G*H, H), dh0, dc0 (B, H; None for the tanh RNN) and the
    gain/shift gradients."""
    p, W, mask, R, Hs, Cs = s["p"], s["W"], s["mask"], s["R"], s["Hs"], s["Cs"]
    T, B, G = p.shape
    H = G // plan.gates
    acc = torch.float64 if plan.f64 else torch.float32
    GH = s["GH"].to(Hs.dtype, copy=True)
    GC = None if Cs is None else s["GC"].to(acc, copy=True)
    GO = s["GO"]
    DR = torch.empty_like(R)
    DP = torch.empty_like(p)
    nb = _grid(plan, B, H)[0]
    parts = {}
    for name, present, F in (("g_hh", plan.hh, G), ("b_hh", s["b_hh"] is not None, G),
                             ("g_s", plan.sum, G), ("b_s", s["b_s"] is not None, G),
                             ("g_c", plan.cell, H), ("b_c", s["b_c"] is not None, H)):
        parts[name] = torch.empty(T, nb, F, dtype=acc, device=p.device) if present else None
    const = plan.constexprs(s["b_hh"], s["b_s"], s["b_c"])
    grid = _grid(plan, B, H)
    step = kernels.lstm_step_bwd if plan.gates == 4 else kernels.tanh_step_bwd
    for t in range(T - 1, -1, -1):
        step[grid](
            R[t], p[t], _ptr(_step(Cs, t), p), _ptr(_step(mask, t), p), GH, GO[t], _ptr(GC, p),
            DR[t], DP[t],
            *(_ptr(s[k], p) for k in ("g_hh", "b_hh")),
            *(_ptr(_step(s[k], t), p) for k in ("m_hh", "v_hh")),
            *(_ptr(s[k], p) for k in ("g_s", "b_s")),
            *(_ptr(_step(s[k], t), p) for k in ("m_s", "v_s")),
            *(_ptr(s[k], p) for k in ("g_c", "b_c")),
            *(_ptr(_step(s[k], t), p) for k in ("m_c", "v_c")),
            *(_ptr(_step(parts[k], t), p) for k in ("g_hh", "b_hh", "g_s", "b_s", "g_c", "b_c")),
            B, H, plan.eps, **const)
        GH.addmm_(DR[t], W)
    out = {"dp": DP, "dh0": GH, "dc0": GC,
           "dW": DR.reshape(T * B, G).t() @ Hs[:T].reshape(T * B, H)}
    for k, v in parts.items():
        out["d" + k] = None if v is None else v.sum((0, 1))
    return out


# ------------------------------------------------------------------ CUDA graphs
class _Captured:
    """One loop captured as a CUDA graph over static copies of its inputs."""

    def __init__(self, fn, plan: Plan, inputs: dict[str, Tensor | None]):
        self.static = {k: None if v is None else v.detach().clone() for k, v in inputs.items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: cuBLAS handles and workspaces, not captured
            fn(plan, self.static)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = fn(plan, self.static)

    def __call__(self, inputs: dict[str, Tensor | None]) -> dict[str, Tensor | None]:
        for k, v in inputs.items():
            if v is not None:
                self.static[k].copy_(v)
        self.graph.replay()
        return {k: None if v is None else v.clone() for k, v in self.outputs.items()}


class GraphCache:
    """Runs a loop eagerly the first time a (loop, plan, shapes) key is seen, captures it as a
    CUDA graph the second time and replays it from then on. At most ``max_graphs`` graphs are
    kept (least recently used dropped), so variable-length workloads fall back to eager loops
    instead of filling the GPU with graphs."""

    def __init__(self, max_graphs: int = 32, enabled: bool = True):
        self.max_graphs, self.enabled = max_graphs, enabled
        self.graphs: OrderedDict = OrderedDict()
        self.seen: Counter = Counter()

    def __call__(self, fn, plan: Plan, inputs: dict[str, Tensor | None]) -> dict[str, Tensor | None]:
        p = inputs["p"]
        if not (self.enabled and p.is_cuda) or torch.cuda.is_current_stream_capturing():
            return fn(plan, inputs)
        key = (fn.__name__, plan, p.device.index,
               tuple((k, None if v is None else (tuple(v.shape), v.dtype)) for k, v in sorted(inputs.items())))
        if key not in self.graphs:
            self.seen[key] += 1
            if self.seen[key] < 2 or len(self.seen) > 4 * self.max_graphs:
                return fn(plan, inputs)
            self.graphs[key] = _Captured(fn, plan, inputs)
            if len(self.graphs) > self.max_graphs:
                self.graphs.popitem(last=False)
        self.graphs.move_to_end(key)
        return self.graphs[key](inputs)


GRAPHS = GraphCache()


class FusedRecurrence(torch.autograd.Function):
    """Differentiable wrapper of the loops: inputs p, h0, c0 (None for the tanh RNN), W_hh and
    the gains/shifts; outputs (T, B, H), h_n and, for the LSTM, c_n."""

    @staticmethod
    def forward(ctx, plan: Plan, extra: dict, p, h0, c0, W, g_hh, b_hh, g_s, b_s, g_c, b_c):
        inp = dict(p=p, h0=h0, c0=c0, W=W.to(p.dtype), g_hh=g_hh, b_hh=b_hh, g_s=g_s, b_s=b_s,
                   g_c=g_c, b_c=b_c, **extra)
        with torch.autocast(p.device.type, enabled=False):  # dtypes are chosen explicitly here
            out = GRAPHS(forward_loop, plan, inp)
        saved = {**inp, **out}
        ctx.plan, ctx.keys = plan, SAVED
        ctx.save_for_backward(*(saved.get(k) for k in SAVED))
        ctx.dtypes = (h0.dtype, None if c0 is None else c0.dtype, W.dtype)
        extra["stats"] = {k: out[k] for k in ("m_hh", "v_hh", "m_s", "v_s", "m_c", "v_c")}
        Hs, Cs, mask = out["Hs"], out["Cs"], inp["mask"]
        outputs = Hs[1:] * mask.unsqueeze(-1).to(Hs.dtype) if mask is not None else Hs[1:].clone()
        if Cs is None:
            return outputs, Hs[-1].clone()
        return outputs, Hs[-1].clone(), Cs[-1].to(c0.dtype)

    @staticmethod
    def backward(ctx, d_out, d_h, *d_c):
        s = dict(zip(ctx.keys, ctx.saved_tensors))
        p, Hs, Cs = s["p"], s["Hs"], s["Cs"]
        s["GO"] = torch.zeros_like(Hs[1:]) if d_out is None else d_out.contiguous()
        s["GH"] = torch.zeros_like(Hs[0]) if d_h is None else d_h
        if Cs is not None:
            s["GC"] = torch.zeros_like(Cs[0]) if d_c[0] is None else d_c[0]
        with torch.autocast(p.device.type, enabled=False):
            g = GRAPHS(backward_loop, ctx.plan, s)
        h_dtype, c_dtype, w_dtype = ctx.dtypes
        dc0 = None if g["dc0"] is None else g["dc0"].to(c_dtype)
        return (None, None, g["dp"], g["dh0"].to(h_dtype), dc0, g["dW"].to(w_dtype),
                g["dg_hh"], g["db_hh"], g["dg_s"], g["db_s"], g["dg_c"], g["db_c"])
