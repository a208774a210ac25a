"""Streaming with ``t0``: a sequence run in chunks (state carried, each chunk told the absolute
time step of its first frame) computes what the whole sequence computes, on the reference loop
and on the fused kernels (Triton interpreter on CPU, float64)."""
import pytest
import torch

from bnrnn.nn import VARIANTS, NormLSTM, NormRNN
from bnrnn.nn.base import BadInput
from tests.helpers import perturb_norms

f64 = torch.float64
CASES = [(NormLSTM, n) for n in VARIANTS] + [(NormRNN, n) for n in NormRNN.norms_allowed]
IDS = [f"{cls.__name__}-{norm}" for cls, norm in CASES]
T_MAX, T = 5, 9
CHUNKS = [(0, 2), (2, 6), (6, 9)]  # one inside T_max, one across it, one wholly past it


def model(cls, norm, backend, **kw):
    """Two stacked layers with perturbed γ/β and random per-step population statistics (every
    step's differs, so a statistic read at the wrong step shows)."""
    m = cls(3, 4, 2, norm=norm, backend="reference", max_steps=T_MAX, **kw).double()
    perturb_norms(m)
    m.backend = backend
    return m


def as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


def chunked(m, x, t0s=None):
    """Run x chunk by chunk, carrying the state; t0s: each chunk's t0 (default: its start)."""
    outs, state = [], None
    for k, (a, b) in enumerate(CHUNKS):
        out, state = m(x[a:b], state, t0=a if t0s is None else t0s[k])
        outs.append(out)
    return torch.cat(outs), as_tuple(state)


def bn_buffers(m):
    return {n: b.clone() for n, b in m.named_buffers()}


@pytest.mark.parametrize("backend", ["reference", "fused"])
@pytest.mark.parametrize("cls, norm", CASES, ids=IDS)
def test_chunks_with_t0_equal_the_whole_sequence_in_eval(cls, norm, backend):
    m = model(cls, norm, backend).eval()
    x = torch.randn(T, 3, 3, dtype=f64)
    with torch.no_grad():
        whole, state = m(x)
        out, last = chunked(m, x)
        torch.testing.assert_close(out, whole, rtol=1e-12, atol=1e-12)
        for a, b in zip(last, as_tuple(state)):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        if norm in ("bn_input", "bn_recurrent", "bn_sum"):  # the test can fail: t0 matters
            wrong, _ = chunked(m, x, t0s=[0, 0, 0])
            assert not torch.allclose(wrong, whole)


@pytest.mark.parametrize("backend", ["reference", "fused"])
@pytest.mark.parametrize("cls, norm", CASES, ids=IDS)
def test_chunks_with_t0_update_the_running_statistics_of_the_whole_sequence(cls, norm, backend):
    """Training, frame-wise statistics: each step's batch statistic is folded into slot t0 + t
    (steps >= T_max into none), so chunks leave the buffers the whole sequence leaves."""
    whole_m, chunk_m = model(cls, norm, backend).train(), model(cls, norm, backend).train()
    chunk_m.load_state_dict(whole_m.state_dict())
    x = torch.randn(T, 3, 3, dtype=f64)
    whole, state = whole_m(x)
    out, last = chunked(chunk_m, x)
    torch.testing.assert_close(out, whole, rtol=1e-12, atol=1e-12)
    for a, b in zip(last, as_tuple(state)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    expected, got = bn_buffers(whole_m), bn_buffers(chunk_m)
    assert expected.keys() == got.keys()
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-12, atol=1e-12, msg=k)


def test_sequence_wise_input_statistics_are_one_statistic_whatever_t0():
    m = model(NormLSTM, "bn_input", "reference", stats="sequence").eval()
    x = torch.randn(T, 3, 3, dtype=f64)
    with torch.no_grad():
        torch.testing.assert_close(chunked(m, x)[0], m(x)[0], rtol=1e-12, atol=1e-12)


def test_t0_zero_is_the_default():
    m = model(NormLSTM, "bn_recurrent", "reference").eval()
    x = torch.randn(4, 3, 3, dtype=f64)
    assert torch.equal(m(x, t0=0)[0], m(x)[0])


@pytest.mark.parametrize("cls", [NormLSTM, NormRNN])
def test_bad_t0_is_refused(cls):
    x = torch.randn(3, 2, 3, dtype=f64)
    bi = cls(3, 4, bidirectional=True, norm="bn_input").double()
    bi(x, t0=0)  # whole sequences are fine
    with pytest.raises(BadInput, match=r"t0=4 with bidirectional=True.*reverse direction"):
        bi(x, t0=4)
    uni = cls(3, 4, norm="bn_input").double()
    for bad in (-1, 1.5, True, torch.tensor(2)):
        with pytest.raises(BadInput, match=r"t0 must be a non-negative int"):
            uni(x, t0=bad)
