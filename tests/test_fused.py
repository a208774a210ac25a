"""The fused Triton recurrence against the reference loop.

CPU (fast tier): float64 under the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1
when there is no GPU), so the two paths must agree to rounding. GPU tier: float32/TF32 and bf16
on CUDA, with the step loops captured as CUDA graphs, against the float64 reference.
"""
import copy

import pytest
import torch

from bnrnn.nn import VARIANTS, NormLSTM, NormRNN, fused
from bnrnn.nn.fused.loops import GRAPHS, make_plan

NORMS = list(VARIANTS)
f64 = torch.float64


def pair(norm, I=3, H=5, L=1, bidirectional=False, device="cpu", dtype=f64, **kw):
    """A reference NormLSTM with trained-looking norms and running statistics, and its fused twin."""
    ref = NormLSTM(I, H, L, bidirectional=bidirectional, norm=norm, backend="reference", **kw).to(device, dtype)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.rand_like(p))
    ref.train()
    ref(torch.randn(4, 6, I, device=device, dtype=dtype))  # population statistics != init
    fus = copy.deepcopy(ref)
    fus.backend = "fused"
    return ref, fus


def run(model, x, state, lengths):
    x = x.detach().clone().requires_grad_()
    out, (h, c) = model(x, state, lengths=lengths)
    g = torch.linspace(-1, 1, out.numel(), device=x.device, dtype=out.dtype).view_as(out)
    ((out * g).sum() + 0.3 * h.sum() + 0.7 * c.square().sum()).backward()
    return {"out": out, "h": h, "c": c, "dx": x.grad,
            **{"grad " + n: p.grad for n, p in model.named_parameters()},
            **{"buffer " + n: b for n, b in model.named_buffers()}}


def assert_same(a, b, **tol):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k].to(a[k].dtype), a[k], msg=lambda m: f"{k}: {m}", **tol)


def test_fused_is_available_here():
    assert fused.available(), "Triton must be installed (pip install triton) for the fused path tests"


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("lengths", [None, [4, 2, 3, 4, 1, 4]], ids=["full", "padded"])
def test_fused_equals_reference_float64(norm, train, lengths):
    ref, fus = pair(norm)
    ref.train(train)
    fus.train(train)
    x = torch.randn(4, 6, 3, dtype=f64)
    state = tuple(torch.randn(2, 1, 6, 5, dtype=f64))
    lengths = None if lengths is None else torch.tensor(lengths)
    assert_same(run(ref, x, state, lengths), run(fus, x, state, lengths), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("norm", ["bn_recurrent", "ln"])
def test_fused_stacked_bidirectional_with_tmax(norm):
    ref, fus = pair(norm, L=2, bidirectional=True, max_steps=3)  # T = 5 > T_max
    for train in (True, False):
        ref.train(train)
        fus.train(train)
        x = torch.randn(5, 4, 3, dtype=f64)
        lengths = torch.tensor([5, 3, 5, 2])
        assert_same(run(ref, x, None, lengths), run(fus, x, None, lengths), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("norm, population", [("bn_recurrent", None), ("none", 2)],
                         ids=["layer-bn_recurrent", "population-none"])
def test_fused_bidirectional_runs_both_directions_in_one_recurrence(norm, population, monkeypatch):
    """One fused recurrence (one launch per step) per layer serves both directions, and
    computes what the directions run one after the other compute: outputs, gradients and the
    statistics each direction updates in its own buffers."""
    calls = []
    apply = fused.FusedRecurrence.apply
    monkeypatch.setattr(fused.FusedRecurrence, "apply", lambda *a: calls.append(1) or apply(*a))
    torch.manual_seed(3)
    joint = NormLSTM(3, 5, 1, bidirectional=True, norm=norm, backend="fused", max_steps=3,
                     population=population).double()
    apart = copy.deepcopy(joint)
    apart.joint_directions = False
    lead = () if population is None else (population,)
    x = torch.randn(5, *lead, 4, 3, dtype=f64)
    lengths = torch.tensor([5, 3, 5, 2] if population is None else [[5, 3, 5, 2], [1, 5, 4, 5]])
    for train in (True, False):
        joint.train(train)
        apart.train(train)
        calls.clear()
        a = run(apart, x, None, lengths)
        assert len(calls) == 2  # one per direction
        calls.clear()
        b = run(joint, x, None, lengths)
        assert len(calls) == 1
        assert_same(a, b, rtol=1e-12, atol=1e-14)
        joint.zero_grad()
        apart.zero_grad()
    assert joint.state_dict().keys() == apart.state_dict().keys()  # the joint modules are not ours
    assert len(list(joint.parameters())) == len(list(apart.parameters()))


@pytest.mark.parametrize("norm", ["none", "bn_input", "bn_sum"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_fused_tanh_rnn_equals_reference_float64(norm, train):
    ref = NormRNN(3, 5, 2, bidirectional=True, norm=norm, backend="reference", max_steps=4).double()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.rand_like(p))
    ref.train()
    ref(torch.randn(5, 6, 3, dtype=f64))
    fus = copy.deepcopy(ref)
    fus.backend = "fused"
    ref.train(train)
    fus.train(train)
    x = torch.randn(5, 6, 3, dtype=f64)
    h0 = torch.randn(4, 6, 5, dtype=f64)
    lengths = torch.tensor([5, 2, 3, 5, 1, 4])
    results = []
    for m in (ref, fus):
        xx = x.clone().requires_grad_()
        out, h = m(xx, h0, lengths=lengths)
        ((out * torch.linspace(-1, 1, out.numel(), dtype=f64).view_as(out)).sum() + h.square().sum()).backward()
        results.append({"out": out, "h": h, "dx": xx.grad,
                        **{"grad " + n: p.grad for n, p in m.named_parameters()},
                        **{"buffer " + n: b for n, b in m.named_buffers()}})
    assert_same(*results, rtol=1e-9, atol=1e-11)


def test_auto_backend_uses_fused_only_on_cuda():
    m = NormLSTM(3, 4, norm="ln")
    assert m.resolve_backend(torch.zeros(1)) == "reference"
    assert NormLSTM(3, 4).resolve_backend(torch.zeros(1)) == "native"
    assert NormRNN(3, 4, norm="bn_sum").resolve_backend(torch.zeros(1)) == "reference"


def test_plan_tiles_hold_what_each_norm_reduces_over():
    bn = make_plan(1, 0, 1, B=24, H=650, train=True, has_mask=False, f64=False, eps=1e-5)
    assert bn.block_b >= 24  # one program sees the whole batch
    ln = make_plan(2, 0, 2, B=32, H=1500, train=True, has_mask=False, f64=False, eps=1e-5)
    assert ln.block_h >= 1500  # one program sees every unit of a row
    with pytest.raises(ValueError, match="B <= 1024"):
        make_plan(1, 0, 0, B=2000, H=8, train=True, has_mask=False, f64=False, eps=1e-5)


# ----------------------------------------------------------------------------- GPU tier
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def rel(x, ref):
    return ((x.double() - ref).norm() / ref.norm().clamp_min(1e-12)).item()


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("shape", [(20, 32, 200), (35, 20, 650), (12, 24, 250)], ids=["small", "medium", "speech"])
def test_gpu_fused_fp32_within_the_references_own_rounding(norm, shape):
    """fp32 kernels (TF32 off) and the fp32 reference loop, both against the float64 reference:
    the fused error must stay within 3x the reference's own fp32 rounding error, over several
    calls, so that the captured CUDA graphs (second call on) are checked too."""
    torch.backends.cuda.matmul.allow_tf32 = False
    T, B, H = shape
    speech = shape[0] == 12
    # the speech stack's setting: padded batches, sequence-wise statistics of the input term
    # (frame-wise ones over the one or two sequences left at the last steps are so ill-conditioned
    # that rounding noise of either path is amplified ~1/sqrt(eps) times)
    stats = "sequence" if speech and norm in ("bn_input", "bn_recurrent") else "frame"
    ref, fus = pair(norm, I=H, H=H, L=2, device="cuda", stats=stats)
    ref32, fus = copy.deepcopy(ref).float(), fus.float()
    lengths = torch.randint(T // 2, T + 1, (B,), device="cuda") if speech else None
    if lengths is not None:
        lengths[0] = T
    for call in range(3):
        for train in (True, False):
            for m in (ref, ref32, fus):
                m.train(train)
            x = torch.randn(T, B, H, device="cuda", dtype=f64)
            a, r, b = run(ref, x, None, lengths), run(ref32, x.float(), None, lengths), run(fus, x.float(), None, lengths)
            for k in a:
                if not a[k].is_floating_point():  # counters (num_batches_tracked)
                    assert torch.equal(a[k], b[k]), k
                    continue
                e_fused, e_ref = rel(b[k], a[k]), rel(r[k], a[k])
                assert e_fused <= max(3 * e_ref, 1e-5), \
                    f"call {call} train={train} {k}: fused {e_fused:.2e} vs fp32 reference {e_ref:.2e}"
    assert len(GRAPHS.graphs) > 0  # the repeated shapes were captured and replayed


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("norm", ["bn_input", "bn_recurrent", "ln"])
def test_gpu_bf16_autocast_as_close_as_the_reference_in_bf16(norm):
    ref, fus = pair(norm, I=64, H=64, L=2, device="cuda", dtype=torch.float32)
    x = torch.randn(20, 32, 64, device="cuda")
    exact, _ = ref(x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out_ref, _ = ref(x)
        out_fused, _ = fus(x)
    e_fused, e_ref = rel(out_fused, exact.double()), rel(out_ref, exact.double())
    assert e_fused <= max(3 * e_ref, 1e-3), f"bf16: fused {e_fused:.2e} vs reference {e_ref:.2e}"


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("norm", ["none", "bn_sum"])
def test_gpu_fused_tanh_rnn_within_the_references_own_rounding(norm):
    """The appendix's char RNN shape (3 x 250, T 100, B 32) in fp32 against float64."""
    torch.backends.cuda.matmul.allow_tf32 = False
    ref = NormRNN(250, 250, 3, norm=norm, backend="reference").to("cuda", f64)
    ref32, fus = copy.deepcopy(ref).float(), copy.deepcopy(ref).float()
    fus.backend = "fused"
    for call in range(3):
        x = torch.randn(100, 32, 250, device="cuda", dtype=f64)
        results = []
        for m, xx in ((ref, x), (ref32, x.float()), (fus, x.float())):
            xx = xx.clone().requires_grad_()
            out, h = m(xx)
            (out.square().sum() + h.sum()).backward()
            results.append({"out": out, "dx": xx.grad, **{n: p.grad for n, p in m.named_parameters()}})
            m.zero_grad(set_to_none=True)
        a, r, b = results
        for k in a:
            assert rel(b[k], a[k]) <= max(3 * rel(r[k], a[k]), 1e-5), f"call {call} {k}"


@pytest.mark.parametrize("norm", ["bn_recurrent", "bn_sum"])
def test_fused_follows_the_batch_norms_mode_under_batch_statistics(norm):
    # the layer evaluates while its batch norms use the batch's statistics (the authors' PTB
    # validation): the fused kernels must normalize as the reference does, buffers untouched
    from bnrnn.nn import batch_statistics

    ref, fus = pair(norm)
    x = torch.randn(4, 6, 3, dtype=f64)
    outs = []
    for model in (ref, fus):
        model.eval()
        before = {n: b.clone() for n, b in model.named_buffers()}
        with torch.no_grad(), batch_statistics(model) as n_bn:
            outs.append(model(x)[0])
        assert n_bn > 0 and not model.training
        for n, b in model.named_buffers():
            torch.testing.assert_close(b, before[n], rtol=0, atol=0)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-12, atol=1e-12)
    ref.eval()
    with torch.no_grad():
        assert not torch.allclose(ref(x)[0], outs[0])  # population statistics differ
