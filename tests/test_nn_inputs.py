"""Bad input to NormLSTM / NormRNN is refused before any backend runs, with nn.LSTM's wording.

Every case runs on the reference loop, the fused Triton path (CPU: Triton's interpreter, which
tests/conftest.py selects without a GPU) and the native ATen path on CPU, and on CUDA (native
is cuDNN there) where a GPU is present. A wrongly shaped state once crashed the native path
(segfault), so reaching the error at all is half of each test. Sizes are tiny: the refusals
never reach a kernel, and the few accepted calls run a handful of interpreted steps.
"""
import copy
import re

import pytest
import torch

from bnrnn.nn import NormLSTM, NormRNN, SeqBatchNorm
from bnrnn.nn.base import BadInput

f64 = torch.float64
T, B, I, H = 4, 3, 3, 2
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs CUDA")

# (backend, device): native is ATen on CPU and cuDNN on CUDA; norm 'none' is the only one it has
BACKENDS = [pytest.param(("reference", "cpu"), id="reference"),
            pytest.param(("fused", "cpu"), id="fused"),
            pytest.param(("native", "cpu"), id="native"),
            pytest.param(("reference", "cuda"), id="reference-cuda", marks=needs_cuda),
            pytest.param(("fused", "cuda"), id="fused-cuda", marks=needs_cuda),
            pytest.param(("native", "cuda"), id="native-cuda", marks=needs_cuda)]


def lstm(where, L=1, bidirectional=False, norm=None, **kw):
    backend, device = where
    norm = norm or ("none" if backend == "native" else "bn_sum")
    return NormLSTM(I, H, L, bidirectional=bidirectional, norm=norm, backend=backend, **kw).to(device, f64)


def rnn(where, norm=None, **kw):
    backend, device = where
    norm = norm or ("none" if backend == "native" else "bn_sum")
    return NormRNN(I, H, 1, norm=norm, backend=backend, **kw).to(device, f64)


def x_(device, *shape, dtype=f64):
    return torch.randn(*(shape or (T, B, I)), dtype=dtype, device=device)


def refused(match, exc=RuntimeError):
    """pytest.raises for the literal text ``match``."""
    return pytest.raises(exc, match=re.escape(match))


# ----------------------------------------------------------------------------- input
@pytest.mark.parametrize("where", BACKENDS)
def test_input_rank_size_dtype_device(where):
    m, dev = lstm(where), where[1]
    with refused("input must have 3 dimensions (or 2: one unbatched sequence (T, I)), got 1"):
        m(x_(dev, T))
    with refused("input must have 3 dimensions (or 2: one unbatched sequence (T, I)), got 4"):
        m(x_(dev, T, B, 1, I))
    with refused("input.size(-1) must be equal to input_size. Expected 3, got 4"):
        m(x_(dev, T, B, 4))
    with refused("input must be a floating-point tensor; got torch.int64", ValueError):
        m(torch.ones(T, B, I, dtype=torch.long, device=dev))
    with refused("RNN input dtype (torch.float32) does not match weight dtype (torch.float64)", ValueError):
        m(x_(dev, dtype=torch.float32))
    with refused("Input and parameter tensors are not at the same device, found input tensor at meta"):
        m(torch.empty(T, B, I, dtype=f64, device="meta"))
    for shape in ((0, B, I), (T, 0, I)):
        with refused("input must hold at least one time step and one sequence"):
            m(x_(dev, *shape))
    with refused("input must be a Tensor", ValueError):
        m(x_(dev).tolist())


# ----------------------------------------------------------------------------- state
@pytest.mark.parametrize("where", BACKENDS)
def test_lstm_state_shapes(where):
    dev = where[1]
    m = lstm(where, L=2, bidirectional=True)  # state (L*D, B, H) = (4, 3, 2)
    good = x_(dev, 4, B, H)
    with refused("For batched 3-D input, hx and cx should also be 3-D but got 2-D"):
        m(x_(dev), (x_(dev, B, H), good))  # the reference loop once broadcast this one
    with refused("Expected hidden[0] size (4, 3, 2), got [2, 3, 2]"):
        m(x_(dev), (x_(dev, 2, B, H), good))  # L*D wrong: cuDNN/ATen read past the tensor
    with refused("Expected hidden[0] size (4, 3, 2), got [4, 1, 2]"):
        m(x_(dev), (x_(dev, 4, 1, H), good))
    with refused("Expected hidden[1] size (4, 3, 2), got [4, 3, 5]"):
        m(x_(dev), (good, x_(dev, 4, B, 5)))
    with refused("state must be a tuple (h0, c0) of Tensors, each (4, 3, 2); got Tensor"):
        m(x_(dev), good)
    with refused("state must be a tuple (h0, c0) of Tensors, each (4, 3, 2); got (Tensor, Tensor, Tensor)"):
        m(x_(dev), (good, good, good))
    with refused("state must be a tuple (h0, c0)"):
        m(x_(dev), (good, None))
    with refused("hidden[1] dtype (torch.float32) must be the input's (torch.float64)"):
        m(x_(dev), (good, good.float()))
    with refused("Input and hidden tensors are not at the same device"):
        m(x_(dev), (good, torch.empty(4, B, H, dtype=f64, device="meta")))


@pytest.mark.parametrize("where", BACKENDS)
def test_rnn_state_shapes(where):
    dev = where[1]
    m = rnn(where)
    with refused("For batched 3-D input, hx should also be 3-D but got 2-D"):
        m(x_(dev), x_(dev, B, H))
    with refused("Expected hidden size (1, 3, 2), got [1, 3, 4]"):
        m(x_(dev), x_(dev, 1, B, 4))
    with refused("state must be a Tensor h0 (1, 3, 2); got tuple"):
        m(x_(dev), (x_(dev, 1, B, H),))
    with refused("hidden dtype (torch.float32) must be the input's (torch.float64)"):
        m(x_(dev), x_(dev, 1, B, H, dtype=torch.float32))


# ----------------------------------------------------------------------------- lengths
@pytest.mark.parametrize("where", BACKENDS)
def test_lengths_dtype_shape_range(where):
    dev = where[1]
    m = lstm(where)
    x = x_(dev)
    cases = [
        (torch.tensor([4.0, 2.0, 3.0]), "lengths must be an integer tensor (torch.int64), not torch.float32"),
        ([4.0, 2.5, 3.0], "lengths must be an integer tensor (torch.int64), not torch.float32"),
        (torch.tensor([True, True, True]), "not torch.bool"),
        (torch.tensor([4, 2]), "lengths must be (B,) = (3,), one length per sequence; got shape (2,)"),
        (torch.tensor([[4, 2, 3]]), "got shape (1, 3)"),
        (torch.tensor(4), "got shape ()"),
        (torch.tensor([4, 0, 3]), "lengths must be (B,)=(3,) in [1, 4] (T = input.size(0); any order); got [4, 0, 3]"),
        (torch.tensor([4, -1, 3]), "in [1, 4]"),
        ([5, 2, 3], "in [1, 4]"),
        ("423", "lengths must be an integer tensor or a sequence of ints"),
    ]
    for lengths, match in cases:
        with refused(match, ValueError):
            m(x, lengths=lengths)
    if dev == "cuda":
        with refused("in [1, 4]", ValueError):
            m(x, lengths=torch.tensor([4, 5, 1], device="cuda"))


def test_errors_are_both_value_and_runtime_errors():
    """ValueError is what these layers raised before; RuntimeError is what nn.LSTM raises."""
    assert issubclass(BadInput, ValueError) and issubclass(BadInput, RuntimeError)
    with pytest.raises(ValueError, match=r"expected input \(T, B, 3\)"):
        NormLSTM(3, 4)(torch.randn(2, 2, 5))


# ----------------------------------------------------------------------------- valid input passes
@pytest.mark.parametrize("where", BACKENDS)
def test_unsorted_lengths_in_every_form_give_the_same_result(where):
    dev = where[1]
    m = lstm(where, bidirectional=True)
    m.eval()  # population statistics: the calls must not change each other's results
    x = x_(dev)
    state = (x_(dev, 2, B, H), x_(dev, 2, B, H))
    ref = m(x, state, lengths=torch.tensor([2, 4, 1]))
    forms = [[2, 4, 1], torch.tensor([2, 4, 1], dtype=torch.int32)]
    if dev != "cpu":
        forms.append(torch.tensor([2, 4, 1], device=dev))
    for lengths in forms:
        out, (h, c) = m(x, state, lengths=lengths)
        assert torch.equal(out, ref[0]) and torch.equal(h, ref[1][0]) and torch.equal(c, ref[1][1])
    assert torch.all(ref[0][2:, 0] == 0) and torch.all(ref[0][1:, 2] == 0)  # padding stays zero
    out, h = rnn(where)(x, x_(dev, 1, B, H), lengths=[3, 1, 4])
    assert out.shape == (T, B, H) and h.shape == (1, B, H)


def test_fused_equals_reference_on_unsorted_lengths_and_a_lone_last_sequence():
    """Later steps of a padded training batch with one sequence left are legitimate: neither
    path refuses them, and both give the same function (β on that row, nothing folded in)."""
    ref = NormLSTM(I, H, 1, norm="bn_recurrent", backend="reference").double()
    fus = copy.deepcopy(ref)
    fus.backend = "fused"
    x, lengths = x_("cpu"), torch.tensor([1, 4, 2])  # steps 2, 3: sequence 1 alone
    (o1, (h1, c1)), (o2, (h2, c2)) = ref(x, lengths=lengths), fus(x, lengths=lengths)
    torch.testing.assert_close(o2, o1, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close((h2, c2), (h1, c1), rtol=1e-9, atol=1e-11)
    for b1, b2 in zip(ref.buffers(), fus.buffers()):
        torch.testing.assert_close(b2, b1, rtol=1e-9, atol=1e-11)
    assert int(ref.layers[0].norm_hh.num_batches_tracked[2]) == 0  # one row: not folded in


# ----------------------------------------------------------------------------- batch norm, one value
BN_CASES = [(NormLSTM, "bn_input"), (NormLSTM, "bn_recurrent"), (NormLSTM, "bn_sum"),
            (NormRNN, "bn_input"), (NormRNN, "bn_sum")]
ONE_VALUE = "Expected more than 1 value per channel when training, got input size"


@pytest.mark.parametrize("backend", ["reference", "fused"])
@pytest.mark.parametrize("cls, norm", BN_CASES, ids=[f"{c.__name__}-{n}" for c, n in BN_CASES])
def test_a_batch_of_one_in_training_is_refused_like_batchnorm1d(cls, norm, backend):
    with pytest.raises(ValueError, match=re.escape(ONE_VALUE)):
        torch.nn.BatchNorm1d(4)(torch.randn(1, 4))  # the wording being copied
    m = cls(I, H, 1, norm=norm, backend=backend).double()
    before = copy.deepcopy(m.state_dict())
    with refused(ONE_VALUE + " torch.Size([4, 1, 3])", ValueError):
        m(x_("cpu", T, 1, I))
    with refused(ONE_VALUE, ValueError):
        m(x_("cpu", T, 1, I), lengths=[2])
    for k, v in m.state_dict().items():  # refused before any statistic was folded in
        assert torch.equal(v, before[k]), k
    m.eval()  # population statistics: one sequence at a time is what deployment does
    out, _ = m(x_("cpu", T, 1, I))
    assert out.shape == (T, 1, H)


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_sequence_wise_bn_needs_two_real_frames_not_two_sequences(backend):
    m = NormLSTM(I, H, norm="bn_input", stats="sequence", backend=backend).double()
    out, _ = m(x_("cpu", T, 1, I))  # one sequence of T frames: a statistic over T values
    assert out.abs().sum() > 0
    out, _ = m(x_("cpu", T, 1, I), lengths=[2])
    assert out.abs().sum() > 0
    with refused(ONE_VALUE, ValueError):
        m(x_("cpu", T, 1, I), lengths=[1])  # one real frame
    with refused(ONE_VALUE, ValueError):
        m(x_("cpu", 1, 1, I))
    # bn_recurrent's gate and cell BNs inside the recurrence are frame-wise whatever stats says
    with refused(ONE_VALUE, ValueError):
        NormLSTM(I, H, norm="bn_recurrent", stats="sequence", backend=backend).double()(x_("cpu", T, 1, I))


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_one_layer_refuses_on_its_own_on_both_paths(backend):
    """The layers check up front; one direction of one layer (and the fused path's Python side,
    before the kernel) refuses on the same condition when called alone."""
    layer = NormLSTM(I, H, norm="bn_sum").double().layers[0]
    before = layer.norm_sum.running_mean.clone()
    z = torch.zeros(1, H, dtype=f64)
    with refused(ONE_VALUE + " torch.Size([1, 8])", ValueError):
        layer(x_("cpu", T, 1, I), (z, z), None, backend)
    assert torch.equal(layer.norm_sum.running_mean, before)
    bn = SeqBatchNorm(5)
    with refused(ONE_VALUE + " torch.Size([1, 5])", ValueError):
        bn.step(torch.randn(1, 5), 0)
    with refused(ONE_VALUE + " torch.Size([3, 1, 5])", ValueError):
        bn(torch.randn(3, 1, 5))
    bn.eval()
    assert bn.step(torch.randn(1, 5), 0).shape == (1, 5)


def test_autocast_may_change_dtypes_as_nn_lstm_allows():
    m = NormLSTM(I, H, norm="bn_sum", backend="reference")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert m.check_forward_args(x_("cpu").bfloat16(), None, None) is None
    with refused("does not match weight dtype", ValueError):
        m.check_forward_args(x_("cpu").bfloat16(), None, None)


@needs_cuda
def test_checks_without_lengths_add_no_host_sync_on_cuda():
    m = NormLSTM(I, H, norm="bn_sum").cuda()
    x = torch.randn(T, B, I, device="cuda")
    state = (torch.zeros(1, B, H, device="cuda"),) * 2
    torch.cuda.set_sync_debug_mode("error")
    try:
        assert m.check_forward_args(x, state, None) is None
    finally:
        torch.cuda.set_sync_debug_mode(0)
