"""Brute-force, equation-by-equation implementations the NormLSTM variants are checked against.

Written independently of ``bnrnn.nn``: statistics come from ``torch.var_mean`` over the real
rows only, layer norm from ``F.layer_norm``, one sequence direction and one time step at a time,
and population statistics are applied from explicitly given tensors.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def bn_rows(x, rows, gamma, beta, eps):
    """BN of x (B, F) with statistics over x[rows] (biased variance)."""
    var, mean = torch.var_mean(x[rows], dim=0, unbiased=False)
    y = (x - mean) / torch.sqrt(var + eps) * gamma
    return y if beta is None else y + beta


def bn_pop(x, mean, var, gamma, beta, eps):
    y = (x - mean) / torch.sqrt(var + eps) * gamma
    return y if beta is None else y + beta


def lstm_layer(layer, x, h, c, mask=None, population=None):
    """One direction of one NormLSTM layer, brute force.

    layer: a bnrnn ``LSTMLayer`` (only its parameters and eps are read); x (T, B, I); h, c (B, H);
    mask (T, B) bool or None; population: None for batch statistics (training), else a dict
    slot -> callable(t) -> (mean, var) giving the population statistics to use at step t.
    """
    T, B, _ = x.shape
    H = layer.hidden_size  # of the gates and the cell; h has h's own size (proj_size P or H)
    mask = torch.ones(T, B, dtype=torch.bool) if mask is None else mask
    kind = {k: type(getattr(layer, "norm_" + k)).__name__ for k in ("ih", "hh", "sum", "cell")}

    def norm(slot, z, t, rows):
        mod = getattr(layer, "norm_" + slot)
        if kind[slot] == "NoNorm":
            return z
        if kind[slot] == "SeqLayerNorm":
            return F.layer_norm(z, (z.shape[-1],), mod.weight, mod.bias, mod.eps)
        if population is not None:
            mean, var = population[slot](t)
            return bn_pop(z, mean, var, mod.weight, mod.bias, mod.eps)
        return bn_rows(z, rows, mod.weight, mod.bias, mod.eps)

    wx = x @ layer.weight_ih.T  # (T, B, 4H)
    ih_mod = layer.norm_ih
    if kind["ih"] == "SeqBatchNorm" and ih_mod.stats == "sequence":
        if population is None:
            flat_real = wx[mask]  # (n, 4H): the real frames only
            var, mean = torch.var_mean(flat_real, dim=0, unbiased=False)
        else:
            mean, var = population["ih"](0)
        px = bn_pop(wx, mean, var, ih_mod.weight, ih_mod.bias, ih_mod.eps)
    else:
        px = torch.stack([norm("ih", wx[t], t, mask[t]) for t in range(T)])
    outs = []
    for t in range(T):
        rows = mask[t]
        pre = px[t] + norm("hh", h @ layer.weight_hh.T, t, rows)
        if layer.bias is not None:
            pre = pre + layer.bias
        a = norm("sum", pre, t, rows)
        i, f, g, o = (a[:, k * H:(k + 1) * H] for k in range(4))
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(norm("cell", c_new, t, rows))
        if getattr(layer, "weight_hr", None) is not None:  # proj_size: h = W_hr (σ(o) tanh(·))
            h_new = h_new @ layer.weight_hr.T
        keep = rows[:, None]
        h = torch.where(keep, h_new, h)
        c = torch.where(keep, c_new, c)
        outs.append(torch.where(keep, h_new, torch.zeros_like(h_new)))
    return torch.stack(outs), h, c
