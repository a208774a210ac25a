"""Fused recurrences: every LSTM variant's (and the tanh RNN's) time step as one Triton kernel,
forward and backward, between cuBLAS products, the step loops captured as CUDA graphs.
``backend='fused'``.

:func:`recurrence` is the drop-in replacement of ``reference_recurrence`` of ``LSTMLayer`` and
``TanhLayer`` and is tested against it (float64; on CPU under the Triton interpreter,
``TRITON_INTERPRET=1``).
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor


@functools.cache
def _triton():
    try:
        import triton  # noqa: F401
    except ImportError:
        return None
    return triton


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter."""
    triton = _triton()
    knobs = getattr(triton, "knobs", None)
    return bool(getattr(getattr(knobs, "runtime", None), "interpret", False))


def available() -> bool:
    """Triton is installed and there is a GPU (or the interpreter) to run its kernels on."""
    return _triton() is not None and (torch.cuda.is_available() or interpreting())


def supports(layer) -> bool:
    from bnrnn.nn.lstm import LSTMLayer
    from bnrnn.nn.rnn import TanhLayer

    return isinstance(layer, (LSTMLayer, TanhLayer))


def _kind(norm) -> int:
    from bnrnn.nn.fused.kernels import BN, LN, NONE
    from bnrnn.nn.norms import SeqBatchNorm, SeqLayerNorm

    return BN if isinstance(norm, SeqBatchNorm) else LN if isinstance(norm, SeqLayerNorm) else NONE


def recurrence(layer, p: Tensor, state: tuple[Tensor, ...],
               mask: Tensor | None) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Same contract as the layer's ``reference_recurrence``: p (T, B, G*H), state (h0, c0) or
    (h0,) each (B, H), mask (T, B) bool or None -> output (T, B, H), final state; updates
    population statistics in training like the reference."""
    if _triton() is None:
        raise RuntimeError("backend='fused' needs Triton: pip install triton (or use backend='reference')")
    if not (p.is_cuda or interpreting()):
        raise RuntimeError("backend='fused' runs Triton kernels: it needs a CUDA tensor, or "
                           "TRITON_INTERPRET=1 for the CPU interpreter (tests); use backend='reference' on CPU")
    if not supports(layer):
        raise NotImplementedError(f"backend='fused' has no kernel for {type(layer).__name__}; use backend='reference'")
    from bnrnn.nn.fused.loops import FusedRecurrence, make_plan

    if torch.is_autocast_enabled(p.device.type):  # the recurrence runs in autocast's dtype
        p = p.to(torch.get_autocast_dtype(p.device.type))
    T, B, G = p.shape
    H = G // layer.gates
    slots = {"hh": layer.norm_hh, "s": layer.norm_sum, "c": getattr(layer, "norm_cell", None)}
    normed = [m for m in slots.values() if _kind(m)]
    eps = normed[0].eps if normed else 1e-5
    if any(m.eps != eps for m in normed):
        raise ValueError("backend='fused' needs one eps for every norm of a layer")
    for m in normed:  # the kernels compute BN inside; refuse what SeqBatchNorm.step refuses
        if _kind(m) == 1:
            m.check_values(B, (B, m.num_features))
    # Batch or population statistics is each BN's own mode, as in the reference loop: under
    # batch_statistics / update_population_statistics the BNs train while the layer evaluates.
    modes = {m.training for m in normed if _kind(m) == 1}
    if len(modes) > 1:
        raise ValueError("backend='fused' needs every batch norm of a layer in the same mode")
    train = modes.pop() if modes else layer.training
    plan = make_plan(*(_kind(m) for m in slots.values()), B=B, H=H, train=train,
                     has_mask=mask is not None, f64=p.dtype == torch.float64, eps=eps,
                     gates=layer.gates)
    extra: dict = {"mask": None if mask is None else mask.to(torch.int8).contiguous()}
    for name, m in slots.items():
        if _kind(m) == 1 and not train:  # BN in evaluation: population statistics, T_max rule
            idx = m.slots(0, T, p.device)
            extra["m_" + name], extra["v_" + name] = m.running_mean[idx], m.running_var[idx]
    h0, c0 = state[0].contiguous(), state[1].contiguous() if layer.has_cell else None
    params = [getattr(m, attr, None) for m in slots.values() for attr in ("weight", "bias")]
    out, *last = FusedRecurrence.apply(plan, extra, p.contiguous(), h0, c0, layer.weight_hh, *params)
    if train:
        n = (mask.sum(1) if mask is not None else torch.full((T,), B, device=p.device)).to(p.dtype)
        for name, m in slots.items():
            if _kind(m) == 1:
                m.update_running(0, extra["stats"]["m_" + name], extra["stats"]["v_" + name], n)
    return out, tuple(last)
