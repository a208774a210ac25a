"""Host side of the fused recurrences (LSTM and tanh RNN): time loops, autograd, CUDA graphs.

Forward, for t = 0 .. T-1 (two launches per step)::

    R[t] = Hs[t] @ W_hh^T                                          cuBLAS
    Hs[t+1], Cs[t+1] = step(R[t], p[t], Hs[t], Cs[t])              kernels.lstm_step_fwd (tanh_step_fwd)

Backward, for t = T-1 .. 0::

    DR[t], DP[t], GC, GH = step_bwd(R[t], p[t], Cs[t], GH, GO[t], GC)   kernels.lstm_step_bwd
    GH += DR[t] @ W_hh                                                  cuBLAS
    then ∂W_hh = Σ_t DR[t]^T Hs[t] in one GEMM over all steps.

Every tensor carries a member axis M after time (p (T, M, B, G*H), W_hh (M, G*H, H), γ (M, F),
...): the products are batched GEMMs over members (plain GEMMs for M = 1, an ordinary layer, as
before), and each step kernel serves every member in one launch (grid axis 2).

Kernels are launched by keyword, with None for an absent tensor (the kernels derive their HAS_*
flags from that). Tensors are named by slot (``SLOTS``): gamma_<slot>, beta_<slot> (parameters),
mean_<slot>, var_<slot> (statistics), dgamma_<slot>, dbeta_<slot> (their gradients).

The loops are pure functions of tensors, so :class:`GraphCache` can capture each one as a CUDA
graph the second time a shape is seen and replay it after that (no per-step launch cost).
"""
from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor

from bnrnn.nn.fused import kernels

SLOTS = ("hh", "sum", "cell")  # the normalization slots inside the recurrence


@dataclass(frozen=True)
class Plan:
    """Everything static about one call of the recurrence (also the CUDA-graph cache key)."""

    gates: int       # 4: LSTM (state h, c), 1: tanh RNN (state h)
    hh: int          # slot kinds: kernels.NONE, BN or LN
    sum: int
    cell: int
    train: bool      # BN uses batch statistics (and saves them) rather than population ones
    has_mask: bool
    f64: bool
    eps: float
    block_b: int
    block_h: int
    num_warps: int

    @property
    def slots(self) -> tuple[str, ...]:
        """The slots whose tensors the step kernels take (the tanh RNN's: only the sum)."""
        return SLOTS if self.gates == 4 else ("sum",)

    def kind(self, slot: str) -> int:
        return getattr(self, slot)

    def features(self, slot: str, H: int) -> int:
        return H if slot == "cell" else self.gates * H

    def constexprs(self) -> dict:
        """The kernels' constexprs that no tensor argument tells (the rest are derived there)."""
        return dict(**{slot.upper(): self.kind(slot) for slot in self.slots}, TRAIN=self.train,
                    BLOCK_B=self.block_b, BLOCK_H=self.block_h, num_warps=self.num_warps)


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def refusal(hh: int, sum_: int, cell: int, *, B: int, gates: int = 4) -> str | None:
    """Why no kernel computes these slot kinds at batch size B (None: one does)."""
    kinds = (hh, sum_, cell)
    if gates == 1 and (hh != kernels.NONE or cell != kernels.NONE):
        return "fused tanh RNN: only the summed pre-activation may be normalized"
    if hh == kernels.LN and sum_ != kernels.NONE:
        return "fused recurrence: a normalized sum after a layer-normalized W_h h is not supported"
    if kernels.BN in kinds and kernels.LN in kinds:
        return "fused recurrence: batch and layer norm in one layer are not supported"
    if kernels.BN in kinds and _pow2(B) > 1024:
        return f"fused recurrence: batch normalization inside it needs B <= 1024; got B={B}"
    return None


def make_plan(hh: int, sum_: int, cell: int, *, B: int, H: int, train: bool, has_mask: bool,
              f64: bool, eps: float, gates: int = 4) -> Plan:
    """Tile shapes: BN needs every row of the batch in a program, LN every hidden unit.
    Raises ValueError where :func:`refusal` names a reason."""
    reason = refusal(hh, sum_, cell, B=B, gates=gates)
    if reason is not None:
        raise ValueError(reason)
    if kernels.BN in (hh, sum_, cell):
        block_b = _pow2(B)
        block_h = max(1, min(_pow2(H), 1024 // block_b))
    elif kernels.LN in (hh, sum_, cell):
        block_h = _pow2(H)
        block_b = max(1, min(_pow2(B), 2048 // block_h))
    else:
        block_b, block_h = min(_pow2(B), 16), min(_pow2(H), 64)
    num_warps = 8 if block_b * block_h >= 2048 else 4
    return Plan(gates, hh, sum_, cell, train, has_mask, f64, eps, block_b, block_h, num_warps)


def _grid(plan: Plan, M: int, B: int, H: int) -> tuple[int, int, int]:
    return (-(-B // plan.block_b), -(-H // plan.block_h), M)


def _bmm(a: Tensor, b: Tensor, out: Tensor) -> Tensor:
    """out = a @ b per member, a (M, n, k), b (M, k, m): cuBLAS's plain GEMM for one member
    (what an ordinary layer always ran), one batched GEMM for several."""
    if a.shape[0] == 1:
        torch.mm(a[0], b[0], out=out[0])
    else:
        torch.bmm(a, b, out=out)
    return out


def _baddbmm_(acc: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """acc += a @ b per member, in place (as :func:`_bmm`)."""
    if a.shape[0] == 1:
        acc[0].addmm_(a[0], b[0])
    else:
        acc.baddbmm_(a, b)
    return acc


def _at(buf: Tensor | None, t: int) -> Tensor | None:
    return None if buf is None else buf[t]


def _names(plan: Plan, *prefixes: str) -> list[str]:
    return [f"{prefix}_{slot}" for slot in plan.slots for prefix in prefixes]


PARAMS = [f"{x}_{slot}" for slot in SLOTS for x in ("gamma", "beta")]
STATS = [f"{x}_{slot}" for slot in SLOTS for x in ("mean", "var")]
SAVED = ("p", "Hs", "Cs", "R", "W", "mask", *PARAMS, *STATS)


# ------------------------------------------------------------------ the loops (pure functions)
def forward_loop(plan: Plan, inp: dict[str, Tensor | None]) -> dict[str, Tensor | None]:
    """inp: p (T, M, B, 4H), h0, c0 (M, B, H), W (M, 4H, H), mask (T, M, B) int8 or None,
    gamma_<slot>, beta_<slot> (M, F), and in evaluation the population statistics mean_<slot>,
    var_<slot> (T, M, F) of the BN slots. Returns Hs, Cs (T+1, M, B, H), R (T, M, B, 4H) and
    the statistics mean_<slot>, var_<slot> of every normalized slot (BN: (T, M, F) per
    feature; LN: (T, M, B) per row)."""
    p, W, mask = inp["p"], inp["W"], inp["mask"]
    T, M, B, G = p.shape
    H = G // plan.gates
    acc = torch.float64 if plan.f64 else torch.float32
    lstm = plan.gates == 4
    Hs = p.new_empty(T + 1, M, B, H)
    Hs[0].copy_(inp["h0"])
    Cs = None
    if lstm:
        Cs = torch.empty(T + 1, M, B, H, dtype=acc, device=p.device)
        Cs[0].copy_(inp["c0"])
    R = torch.empty_like(p)
    out = {"Hs": Hs, "Cs": Cs, "R": R}
    for slot in plan.slots:
        kind = plan.kind(slot)
        computed = kind == kernels.LN or (kind == kernels.BN and plan.train)
        for stat in ("mean_" + slot, "var_" + slot):
            shape = (T, M, B) if kind == kernels.LN else (T, M, plan.features(slot, H))
            out[stat] = torch.empty(shape, dtype=acc, device=p.device) if computed else inp.get(stat)
    params = {k: inp[k] for k in _names(plan, "gamma", "beta")}
    stats = _names(plan, "mean", "var")
    step = kernels.lstm_step_fwd if lstm else kernels.tanh_step_fwd
    grid, Wt, const = _grid(plan, M, B, H), W.transpose(1, 2), plan.constexprs()
    for t in range(T):
        _bmm(Hs[t], Wt, out=R[t])
        cell = dict(c_prev=Cs[t], c_next=Cs[t + 1]) if lstm else {}
        step[grid](r=R[t], p=p[t], h_prev=Hs[t], h_next=Hs[t + 1], mask=_at(mask, t), **cell,
                   **params, **{k: _at(out[k], t) for k in stats}, B=B, H=H, eps=plan.eps, **const)
    return out


def backward_loop(plan: Plan, s: dict[str, Tensor | None]) -> dict[str, Tensor | None]:
    """s: the saved forward tensors (SAVED) and the incoming gradients GO (T, M, B, H), GH, GC
    (M, B, H). Returns dp (T, M, B, G*H), dW (M, G*H, H), dh0, dc0 (M, B, H; None for the tanh
    RNN) and the gradients dgamma_<slot>, dbeta_<slot> (M, F) (None where there is no such
    parameter)."""
    p, W, mask, R, Hs, Cs = s["p"], s["W"], s["mask"], s["R"], s["Hs"], s["Cs"]
    T, M, B, G = p.shape
    H = G // plan.gates
    acc = torch.float64 if plan.f64 else torch.float32
    lstm = plan.gates == 4
    GH = s["GH"].to(Hs.dtype, copy=True)
    GC = s["GC"].to(acc, copy=True) if lstm else None
    GO = s["GO"]
    DR = torch.empty_like(R)
    DP = torch.empty_like(p)
    grid = _grid(plan, M, B, H)
    parts = {}  # per-program partial sums of the parameter gradients, (T, M, programs, F)
    for slot in plan.slots:
        shape = (T, M, grid[0], plan.features(slot, H))
        present = {"gamma": plan.kind(slot) != kernels.NONE, "beta": s["beta_" + slot] is not None}
        for x in ("gamma", "beta"):
            parts[f"d{x}_{slot}"] = torch.empty(shape, dtype=acc, device=p.device) if present[x] else None
    params = {k: s[k] for k in _names(plan, "gamma", "beta")}
    saved = _names(plan, "mean", "var")
    step = kernels.lstm_step_bwd if lstm else kernels.tanh_step_bwd
    const = plan.constexprs()
    for t in range(T - 1, -1, -1):
        cell = dict(c_prev=Cs[t], dc=GC) if lstm else {}
        step[grid](r=R[t], p=p[t], mask=_at(mask, t), dh=GH, dout=GO[t], dr=DR[t], dp=DP[t],
                   **cell, **params, **{k: _at(s[k], t) for k in saved},
                   **{k: _at(v, t) for k, v in parts.items()}, B=B, H=H, eps=plan.eps, **const)
        _baddbmm_(GH, DR[t], W)
    # ∂W = Σ_t DR[t]^T Hs[t] per member, one GEMM over all steps: (M, G, T*B) @ (M, T*B, H)
    DRm, Hm = DR.transpose(0, 1).reshape(M, T * B, G), Hs[:T].transpose(0, 1).reshape(M, T * B, H)
    dW = _bmm(DRm.transpose(1, 2), Hm, out=DR.new_empty(M, G, H))
    out = {"dp": DP, "dh0": GH, "dc0": GC, "dW": dW}
    for k in PARAMS:
        v = parts.get("d" + k)
        out["d" + k] = None if v is None else v.sum((0, 2))
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
    """Differentiable wrapper of the loops: inputs p, h0, c0 (None for the tanh RNN), W_hh and the
    gains/shifts gamma_<slot>, beta_<slot> of ``SLOTS``, each with the member axis (see
    :func:`forward_loop`); ``given`` holds the tensors that take no gradient (mask, population
    statistics). Outputs (T, M, B, H), h_n, c_n (None for the tanh RNN) and the step statistics
    mean_<slot>, var_<slot> of ``SLOTS`` (None where not computed)."""

    @staticmethod
    def forward(ctx, plan: Plan, given: dict, p, h0, c0, W, *params):
        inp = dict(p=p, h0=h0, c0=c0, W=W.to(p.dtype), **dict(zip(PARAMS, params)), **given)
        with torch.autocast(p.device.type, enabled=False):  # dtypes are chosen explicitly here
            out = GRAPHS(forward_loop, plan, inp)
        saved = {**inp, **out}
        ctx.plan = plan
        ctx.save_for_backward(*(saved.get(k) for k in SAVED))
        ctx.dtypes = (h0.dtype, None if c0 is None else c0.dtype, W.dtype)
        stats = [out.get(k) if k in out and k not in given else None for k in STATS]
        ctx.mark_non_differentiable(*(x for x in stats if x is not None))
        Hs, Cs, mask = out["Hs"], out["Cs"], inp["mask"]
        outputs = Hs[1:] * mask.unsqueeze(-1).to(Hs.dtype) if mask is not None else Hs[1:].clone()
        c_n = None if Cs is None else Cs[-1].to(c0.dtype)
        return (outputs, Hs[-1].clone(), c_n, *stats)

    @staticmethod
    def backward(ctx, d_out, d_h, d_c, *_):
        s = dict(zip(SAVED, ctx.saved_tensors))
        p, Hs, Cs = s["p"], s["Hs"], s["Cs"]
        s["GO"] = torch.zeros_like(Hs[1:]) if d_out is None else d_out.contiguous()
        s["GH"] = torch.zeros_like(Hs[0]) if d_h is None else d_h
        if Cs is not None:
            s["GC"] = torch.zeros_like(Cs[0]) if d_c is None else d_c
        with torch.autocast(p.device.type, enabled=False):
            g = GRAPHS(backward_loop, ctx.plan, s)
        h_dtype, c_dtype, w_dtype = ctx.dtypes
        dc0 = None if g["dc0"] is None else g["dc0"].to(c_dtype)
        return (None, None, g["dp"], g["dh0"].to(h_dtype), dc0, g["dW"].to(w_dtype),
                *(g["d" + k] for k in PARAMS))
