"""backend='auto' picks the fused kernels only where they are compiled (CUDA) and have a plan for
the layer; for every configuration they refuse it runs the reference loop (same numbers), while
backend='fused' raises the kernels' error. The decision takes ``compiled=`` (or a monkeypatched
``fused.compiled_for``), so it is tested here without a GPU; the fused path itself runs under
the Triton interpreter (tests/conftest.py)."""
import ast
import copy
from pathlib import Path

import pytest
import torch

from bnrnn.nn import NormLSTM, NormRNN, fused
from bnrnn.nn.fused.loops import Plan
from bnrnn.nn.lstm import LSTMLayer
from bnrnn.nn.rnn import TanhLayer
from bnrnn.nn.variants import BN, BN0, LN, LN0, VARIANTS, Variant

f64 = torch.float64
I, H = 3, 4
LAYER = dict(stats="frame", max_steps=10, momentum=0.1, eps=1e-5, gamma=1.0, init="pytorch",
             init_range=0.1, forget_bias=None)


def with_variant(stack, variant):
    """``stack`` with its one layer rebuilt for a variant no row of VARIANTS has."""
    cls = LSTMLayer if isinstance(stack, NormLSTM) else TanhLayer
    stack.layers[0] = cls(I, H, variant, **LAYER)
    return stack


def mixed_bn_ln():
    return with_variant(NormLSTM(I, H, norm="bn_recurrent"), Variant(None, BN0, None, LN, True, 1.0, None, ""))


def ln_then_normalized_sum():
    return with_variant(NormLSTM(I, H, norm="ln"), Variant(None, LN0, LN, None, True, 1.0, None, ""))


def tanh_with_normalized_hh():
    return with_variant(NormRNN(I, H, norm="bn_sum"), Variant(None, BN0, None, None, True, 1.0, None, ""))


def two_eps():
    m = NormLSTM(I, H, norm="bn_recurrent")
    m.layers[0].norm_cell.eps = 1e-3
    return m


def bn_in_two_modes():
    m = NormLSTM(I, H, norm="bn_recurrent")
    m.train()
    m.layers[0].norm_hh.eval()
    return m


# (name, model factory, batch size, what backend='fused' says)
REFUSED = [
    ("bn and ln in one layer", mixed_bn_ln, 6, "batch and layer norm in one layer"),
    ("normalized sum after ln", ln_then_normalized_sum, 6, "normalized sum after a layer-normalized"),
    ("bn with B > 1024", lambda: NormLSTM(I, H, norm="bn_sum"), 1025, r"needs B <= 1024; got B=1025"),
    ("tanh rnn with normalized hh", tanh_with_normalized_hh, 6, "only the summed pre-activation"),
    ("two eps in one layer", two_eps, 6, "one eps for every norm"),
    ("batch norms in two modes", bn_in_two_modes, 6, "every batch norm of a layer in the same mode"),
]


def forward_backward(model, x):
    x = x.clone().requires_grad_()
    out, state = model(x)
    h = state[0] if isinstance(state, tuple) else state
    (out.square().sum() + h.sum()).backward()
    return {"out": out, "dx": x.grad, **{n: p.grad for n, p in model.named_parameters()},
            **{n: b for n, b in model.named_buffers()}}


def twins(make, backend):
    torch.manual_seed(0)
    ref = make().double()
    ref.backend = "reference"
    other = copy.deepcopy(ref)
    other.backend = backend
    return ref, other


@pytest.mark.parametrize("name, make, B, message", REFUSED, ids=[r[0] for r in REFUSED])
def test_auto_falls_back_where_no_kernel_computes_the_layer(name, make, B, message, monkeypatch):
    ref, auto = twins(make, "auto")
    x = torch.randn(3, B, I, dtype=f64)
    assert all(fused.plan(layer, torch.zeros(3, B, layer.gates * H, dtype=f64)) is None
               for layer in auto.layers[:1])
    assert auto.resolve_backend(x, compiled=True) == "reference"
    monkeypatch.setattr(fused, "compiled_for", lambda x: True)  # as on a GPU
    a, b = forward_backward(ref, x), forward_backward(auto, x)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("name, make, B, message", REFUSED, ids=[r[0] for r in REFUSED])
def test_fused_raises_where_no_kernel_computes_the_layer(name, make, B, message):
    _, model = twins(make, "fused")
    with pytest.raises(ValueError, match=message):
        model(torch.randn(3, B, I, dtype=f64))


@pytest.mark.parametrize("cls, norm", [(NormLSTM, n) for n in VARIANTS if n != "none"]
                         + [(NormRNN, n) for n in NormRNN.norms_allowed if n != "none"])
def test_auto_picks_fused_where_compiled_and_equals_the_reference(cls, norm, monkeypatch):
    ref, auto = twins(lambda: cls(I, H, norm=norm), "auto")
    x = torch.randn(3, 5, I, dtype=f64)
    assert auto.resolve_backend(x) == "reference"  # CPU: the kernels are not compiled here
    assert auto.resolve_backend(x, compiled=True) == "fused"
    layer = auto.layers[0]
    assert isinstance(fused.plan(layer, torch.zeros(3, 5, layer.gates * H, dtype=f64)), Plan)
    monkeypatch.setattr(fused, "compiled_for", lambda x: True)
    a, b = forward_backward(ref, x), forward_backward(auto, x)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-9, atol=1e-11, msg=k)


def test_the_fused_package_imports_no_layer_module():
    # the layers import the fused package; the reverse would be a cycle
    root = Path(fused.__file__).parent
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(("bnrnn.nn.base", "bnrnn.nn.lstm", "bnrnn.nn.rnn",
                                                   "bnrnn.nn.norms", "bnrnn.nn.variants")), \
                    f"{path.name} imports {node.module}"


def test_every_variant_slot_kind_has_a_kernel_constant():
    kinds = {slot.kind for v in VARIANTS.values() for slot in (v.hh, v.sum, v.cell) if slot is not None}
    assert kinds <= set(fused.KERNEL_KIND) and {BN.kind, LN.kind} <= set(fused.KERNEL_KIND)
