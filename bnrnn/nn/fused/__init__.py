"""Fused recurrences: every LSTM variant's (and the tanh RNN's) time step as one Triton kernel,
forward and backward, between cuBLAS products, the step loops captured as CUDA graphs.
``backend='fused'``.

:func:`plan` says whether a kernel computes a layer's configuration (``None``: none does, and
``backend='auto'`` runs the reference loop instead); :func:`recurrence` is the drop-in
replacement of the layer's ``reference_recurrence`` and is tested against it (float64; on CPU
under the Triton interpreter, ``TRITON_INTERPRET=1``).

This package reads a layer only through its attributes (``variant``, ``gates``, ``has_cell``,
``population``, ``weight_hh``, ``norm_hh``, ``norm_sum``, ``norm_cell``), so it imports nothing
of the layers. A population's members run in one launch per step (a member axis in the grid).
"""
from __future__ import annotations

import torch
from torch import Tensor

try:
    import triton
except ImportError:  # optional: without Triton every layer runs the reference loop
    triton = None

if triton is not None:
    from bnrnn.nn.fused import kernels
    from bnrnn.nn.fused.loops import PARAMS, STATS, FusedRecurrence, Plan, make_plan, refusal

    # The one mapping from a variant's slot kind (bnrnn.nn.variants.Slot.kind; None: empty
    # slot) to the kernels' constant for it.
    KERNEL_KIND = {None: kernels.NONE, "bn": kernels.BN, "ln": kernels.LN}


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter."""
    knobs = getattr(triton, "knobs", None)
    return bool(getattr(getattr(knobs, "runtime", None), "interpret", False))


def available() -> bool:
    """Triton is installed and there is a GPU (or the interpreter) to run its kernels on."""
    return triton is not None and (torch.cuda.is_available() or interpreting())


def compiled_for(x: Tensor) -> bool:
    """Whether ``backend='auto'`` may run the kernels on x: compiled ones, on a CUDA tensor
    (the interpreter is for tests; auto never picks it)."""
    return triton is not None and x.is_cuda


def _slots(layer) -> dict:
    """slot name -> (its Slot of the layer's variant or None, its norm module)."""
    variant = layer.variant
    slots = {"hh": (variant.hh, layer.norm_hh), "sum": (variant.sum, layer.norm_sum)}
    if layer.has_cell:
        slots["cell"] = (variant.cell, layer.norm_cell)
    return slots


def _kind(slot) -> int:
    return KERNEL_KIND[None if slot is None else slot.kind]


def refusal_of(layer, batch: int) -> Exception | None:
    """The error ``backend='fused'`` raises for ``layer`` at batch size ``batch``; None where a
    kernel computes it."""
    if triton is None:
        return RuntimeError("backend='fused' needs Triton: pip install triton (or use backend='reference')")
    if getattr(layer, "weight_hr", None) is not None:
        return NotImplementedError("backend='fused' has no kernel for proj_size > 0; use "
                                   "backend='reference' (backend='auto' does)")
    if (layer.gates, layer.has_cell) not in ((4, True), (1, False)):
        return NotImplementedError(f"backend='fused' has no kernel for {type(layer).__name__}; "
                                   f"use backend='reference'")
    slots = _slots(layer)
    for name, (slot, module) in slots.items():
        if slot is None and any(True for _ in module.parameters()):
            # a module put in an empty slot after construction (CharLSTM's CellBias): the
            # kernels read the variant's slots and would leave it out
            return NotImplementedError(f"backend='fused' has no kernel for the "
                                       f"{type(module).__name__} in norm_{name}; use "
                                       f"backend='reference' (backend='auto' does)")
    kinds = {name: _kind(slot) for name, (slot, _) in slots.items()}
    reason = refusal(kinds["hh"], kinds["sum"], kinds.get("cell", kernels.NONE), B=batch,
                     gates=layer.gates)
    if reason is not None:
        return ValueError(reason)
    if len({m.eps for name, (_, m) in slots.items() if kinds[name] != kernels.NONE}) > 1:
        return ValueError("backend='fused' needs one eps for every norm of a layer")
    # Batch or population statistics is each BN's own mode, as in the reference loop: under
    # batch_statistics / update_population_statistics the BNs train while the layer evaluates.
    if len({m.training for name, (_, m) in slots.items() if kinds[name] == kernels.BN}) > 1:
        return ValueError("backend='fused' needs every batch norm of a layer in the same mode")
    return None


def plan(layer, p: Tensor, mask: Tensor | None = None) -> Plan | None:
    """The kernels' plan for ``layer`` on p (T, B, G*H), or None where no kernel computes it."""
    if refusal_of(layer, p.shape[1]) is not None:
        return None
    return _plan(layer, p, mask)


def _plan(layer, p: Tensor, mask: Tensor | None) -> Plan:
    slots = _slots(layer)
    kinds = {name: _kind(slot) for name, (slot, _) in slots.items()}
    normed = [m for name, (_, m) in slots.items() if kinds[name] != kernels.NONE]
    modes = {m.training for name, (_, m) in slots.items() if kinds[name] == kernels.BN}
    B, G = p.shape[-2], p.shape[-1]
    return make_plan(kinds["hh"], kinds["sum"], kinds.get("cell", kernels.NONE), B=B,
                     H=G // layer.gates, train=modes.pop() if modes else layer.training,
                     has_mask=mask is not None, f64=p.dtype == torch.float64,
                     eps=normed[0].eps if normed else 1e-5, gates=layer.gates)


def recurrence(layer, p: Tensor, state: tuple[Tensor, ...], mask: Tensor | None,
               t0: int = 0) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Same contract as the layer's ``reference_recurrence``: p (T, B, G*H), state (h0, c0) or
    (h0,) each (B, H), mask (T, B) bool or None, p[t] time step t0 + t -> output (T, B, H),
    final state; with a population (``layer.population`` = M) p (T, M, B, G*H), states
    (M, B, H), mask (T, M, B), output (T, M, B, H). Updates population statistics in training
    like the reference. Raises :func:`refusal_of`'s error. The kernels see step t's statistics
    only, so ``t0`` is applied here, where the per-step statistics are sliced.

    The loops always carry a member axis; an ordinary layer's tensors get one of size 1 here
    (views) and lose it on the way out."""
    if triton is not None and not (p.is_cuda or interpreting()):
        raise RuntimeError("backend='fused' runs Triton kernels: it needs a CUDA tensor, or "
                           "TRITON_INTERPRET=1 for the CPU interpreter (tests); use backend='reference' on CPU")
    error = refusal_of(layer, p.shape[-2])
    if error is not None:
        raise error
    if torch.is_autocast_enabled(p.device.type):  # the recurrence runs in autocast's dtype
        p = p.to(torch.get_autocast_dtype(p.device.type))
    single = getattr(layer, "population", None) is None

    def members(x: Tensor | None, axis: int = 0) -> Tensor | None:
        """x with its member axis (of size 1 for an ordinary layer)."""
        return x.unsqueeze(axis) if single and x is not None else x

    def ordinary(x: Tensor | None, axis: int = 0) -> Tensor | None:
        """x without the size-1 member axis of an ordinary layer."""
        return x.squeeze(axis) if single and x is not None else x

    p, mask = members(p, 1), members(mask, 1)  # (T, M, B, G*H), (T, M, B)
    T, M, B, _ = p.shape
    plan_ = _plan(layer, p, mask)
    norms = {name: m for name, (_, m) in _slots(layer).items()}
    bns = [name for name in norms if plan_.kind(name) == kernels.BN]
    for name in bns:  # the kernels compute BN inside; refuse what SeqBatchNorm.step refuses
        norms[name].check_values(B, (B, norms[name].num_features))
    given: dict = {"mask": None if mask is None else mask.to(torch.int8).contiguous()}
    if not plan_.train:  # BN in evaluation: population statistics, T_max rule
        for name in bns:
            idx = norms[name].slots(t0, T, p.device)
            for stat in ("mean", "var"):  # (M, S, F) -> (T, M, F)
                running = members(getattr(norms[name], "running_" + stat))
                given[f"{stat}_{name}"] = running[:, idx].transpose(0, 1).contiguous()
    h0 = members(state[0]).contiguous()
    c0 = members(state[1]).contiguous() if layer.has_cell else None
    attr = {"gamma": "weight", "beta": "bias"}  # PARAMS are named gamma_<slot>, beta_<slot>
    params = [members(getattr(norms.get(slot), attr[x], None)) for x, slot in (k.split("_") for k in PARAMS)]
    out, h_n, c_n, *stats = FusedRecurrence.apply(plan_, given, p.contiguous(), h0, c0,
                                                  members(layer.weight_hh), *params)
    if plan_.train and bns:
        stats = dict(zip(STATS, stats))
        n = mask.sum(-1) if mask is not None else torch.full((T, M), B, device=p.device)
        n = ordinary(n.t().to(p.dtype))  # (M, T) frames per member and step
        for name in bns:  # (T, M, F) -> the buffers' (M, T, F)
            norms[name].update_running(t0, *(ordinary(stats[f"{s}_{name}"].transpose(0, 1))
                                             for s in ("mean", "var")), n)
    h_n, c_n = ordinary(h_n), ordinary(c_n)
    return ordinary(out, 1), (h_n,) if c_n is None else (h_n, c_n)
