"""Populations: ``population=M`` runs M independent layers side by side, and member m computes
exactly what an ordinary layer with member m's parameters and statistics computes alone
(outputs, final states, input gradients, parameter gradients, running statistics):
``stack`` -> forward/backward -> ``member(m)`` equals the member run alone. And
``population=None`` keeps today's results bit for bit (tests/fixtures/nn_outputs.pt)."""
import sys
from pathlib import Path

import pytest
import torch

from bnrnn.nn import VARIANTS, NormLSTM, NormRNN
from bnrnn.nn.base import BadInput
from tests.helpers import perturb_norms

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
import make_nn_outputs  # noqa: E402  (the fixture's own recipe)

f64 = torch.float64
# The interpreter evaluates padded rows too (their results are discarded by the kernels' masks);
# a batch norm over a member's lone real row scales them by 1/sqrt(eps), and numpy warns when
# its exp of such a discarded value overflows to inf.
padded_rows_overflow = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
CASES = [(NormLSTM, n) for n in VARIANTS] + [(NormRNN, n) for n in NormRNN.norms_allowed]
IDS = [f"{cls.__name__}-{norm}" for cls, norm in CASES]
M, T, B, I, H = 3, 5, 4, 3, 4
LENGTHS = [[5, 3, 4, 2], [2, 5, 5, 1], [5, 5, 5, 5]]  # each member its own padding


def member_layers(cls, norm, n=M, **kw):
    """n ordinary layers of one configuration, each with its own weights, perturbed γ/β and
    random per-step population statistics."""
    kw = {"num_layers": 2, "bidirectional": True, "max_steps": 4, "backend": "reference", **kw}
    layers = []
    for m in range(n):
        torch.manual_seed(100 + m)
        layer = cls(I, H, norm=norm, **kw).double()
        perturb_norms(layer)
        layers.append(layer)
    return layers


def stacked(layers):
    """The population of ``layers``, built here from their state dicts (independently of the
    library's own ``stack``)."""
    first = layers[0]
    pop = type(first)(first.input_size, first.hidden_size, first.num_layers,
                      bidirectional=first.bidirectional, dropout=first.dropout, norm=first.norm, stats=first.stats, backend=first.backend,
                      max_steps=first.options["max_steps"], population=len(layers)).double()
    states = [layer.state_dict() for layer in layers]
    pop.load_state_dict({k: torch.stack([s[k] for s in states]) for k in states[0]})
    return pop


def forward_backward(model, x, state, lengths, weights):
    """Forward, then backward of Σ out·g + Σ_k c_k Σ state_k² with fixed weights g, c_k."""
    x = x.detach().clone().requires_grad_()
    state = tuple(s.detach().clone().requires_grad_() for s in state)
    lstm = isinstance(model, NormLSTM)
    out, last = model(x, state if lstm else state[0], lengths)
    last = last if lstm else (last,)
    g, c = weights
    ((out * g).sum() + sum(ck * s.square().sum() for ck, s in zip(c, last))).backward()
    return {"out": out, **{f"state{k}": s for k, s in enumerate(last)}, "dx": x.grad,
            **{f"dstate{k}": s.grad for k, s in enumerate(state)},
            **{"grad " + n: p.grad for n, p in model.named_parameters()},
            **{"buffer " + n: b for n, b in model.named_buffers()}}


def member_slice(key: str, value: torch.Tensor, m: int) -> torch.Tensor:
    """Member m's part of a population result: activations carry M at axis 1 (input, output:
    (T, M, B, .); states: (L*D, M, B, H)), parameters and buffers at axis 0."""
    return value[:, m] if key.split()[0] in ("out", "dx") or key.startswith(("state", "dstate")) \
        else value[m]


def assert_state_dicts_equal(a, b, what):
    assert a.keys() == b.keys(), what
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-10, atol=1e-12, msg=lambda e: f"{what} {k}: {e}")


def assert_members_alone(cls, norm, train, shared_lengths=False, backend="reference",
                         alone_backend=None, **kw):
    """A population on ``backend`` against each member alone on ``alone_backend`` (the same
    by default)."""
    layers = member_layers(cls, norm, backend=alone_backend or backend, **kw)
    for layer in layers:
        layer.train(train)
    pop = cls.stack(layers)
    pop.backend = backend
    assert pop.training == train and pop.population == M
    independent = stacked(layers).state_dict()
    assert all(torch.equal(v, independent[k]) for k, v in pop.state_dict().items())
    L, D = layers[0].num_layers, layers[0].num_directions
    x = torch.randn(T, M, B, I, dtype=f64)
    n_states = 2 if cls is NormLSTM else 1
    state = tuple(torch.randn(L * D, M, B, H, dtype=f64) for _ in range(n_states))
    lengths = torch.tensor(LENGTHS[0] if shared_lengths else LENGTHS)
    g = torch.linspace(-1, 1, T * M * B * D * H, dtype=f64).view(T, M, B, D * H)
    c = (0.3, 0.7)
    got = forward_backward(pop, x, state, lengths, (g, c))
    for m, layer in enumerate(layers):
        alone = forward_backward(layer, x[:, m], tuple(s[:, m] for s in state),
                                 lengths if shared_lengths else lengths[m], (g[:, m], c))
        assert alone.keys() == got.keys()
        for k in alone:
            torch.testing.assert_close(member_slice(k, got[k], m), alone[k], rtol=1e-10, atol=1e-12,
                                       msg=lambda e: f"member {m} {k}: {e}")
        # the member taken out after training holds what the member trained alone holds
        assert_state_dicts_equal(pop.member(m).state_dict(), layer.state_dict(), f"member({m})")


# ----------------------------------------------------------------------------- every backend
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("cls, norm", CASES, ids=IDS)
def test_each_member_computes_what_it_computes_alone(cls, norm, train):
    assert_members_alone(cls, norm, train)


def bn_in_recurrence(norm):
    v = VARIANTS[norm]
    return any(slot is not None and slot.kind == "bn" for slot in (v.hh, v.sum, v.cell))


# evaluation differs from training inside the kernels only where a batch norm acts in the
# recurrence (elsewhere the kernels compute the same function in both modes)
FUSED_FAST = [(cls, norm, train) for cls, norm in CASES for train in (True, False)
              if train or bn_in_recurrence(norm)]


@padded_rows_overflow
@pytest.mark.parametrize("cls, norm, train", FUSED_FAST,
                         ids=[f"{c.__name__}-{n}-{'train' if t else 'eval'}" for c, n, t in FUSED_FAST])
def test_fused_each_member_computes_what_it_computes_alone(cls, norm, train):
    """The step kernels with a member axis in their grid (Triton interpreter on CPU) against each
    member alone on the reference loop (which tests/test_fused.py holds the kernels to at M = 1),
    one layer: the interpreter is slow, and the stack and directions are the same code as on
    the reference loop; the slow tier runs every case with two bidirectional layers, members
    alone on the kernels too."""
    assert_members_alone(cls, norm, train, backend="fused", alone_backend="reference",
                         num_layers=1, bidirectional=False)


@pytest.mark.slow
@padded_rows_overflow
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("cls, norm", CASES, ids=IDS)
def test_fused_bidirectional_stack_each_member_computes_what_it_computes_alone(cls, norm, train):
    assert_members_alone(cls, norm, train, backend="fused")


@pytest.mark.parametrize("norm", ["bn_input", "bn_recurrent"])
def test_sequence_wise_statistics_are_each_members_own(norm):
    assert_members_alone(NormLSTM, norm, True, stats="sequence")


def test_shared_lengths_apply_to_every_member():
    assert_members_alone(NormLSTM, "bn_recurrent", True, shared_lengths=True)


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_streaming_with_t0_in_a_population(backend):
    layers = member_layers(NormLSTM, "bn_recurrent", num_layers=1, bidirectional=False, backend=backend)
    pop = NormLSTM.stack(layers).eval()
    x = torch.randn(7, M, B, I, dtype=f64)  # longer than max_steps = 4
    with torch.no_grad():
        whole, _ = pop(x)
        first, state = pop(x[:3])
        rest, _ = pop(x[3:], state, t0=3)
    torch.testing.assert_close(torch.cat([first, rest]), whole, rtol=1e-12, atol=1e-12)


def test_population_parameters_and_buffers_have_a_leading_member_axis():
    plain, pop = NormLSTM(I, H, norm="bn_recurrent"), NormLSTM(I, H, norm="bn_recurrent", population=M)
    plain_shapes = {k: v.shape for k, v in plain.state_dict().items()}
    assert {k: v.shape for k, v in pop.state_dict().items()} == \
        {k: (M, *s) for k, s in plain_shapes.items()}
    # each member initialised as a layer of its own: forget-gate bias 1, its own weights
    layer = pop.layers[0]
    assert torch.all(layer.bias[:, H:2 * H] == 1.0)
    assert not torch.equal(layer.weight_hh[0], layer.weight_hh[1])
    ortho = NormLSTM(I, H, norm="bn_recurrent", init="orthogonal", population=2).layers[0].weight_hh
    for m in range(2):
        block = ortho[m, :H]
        torch.testing.assert_close(block @ block.T, torch.eye(H), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- stack and member
def test_member_is_an_independent_ordinary_copy():
    layers = member_layers(NormRNN, "bn_sum", num_layers=1, bidirectional=False)
    pop = NormRNN.stack(layers).eval()
    first = pop.member(0)
    assert first.population is None and not first.training and type(first) is NormRNN
    assert first.configuration() == layers[0].configuration()
    x = torch.randn(T, B, I, dtype=f64)
    with torch.no_grad():
        torch.testing.assert_close(first(x)[0], layers[0].eval()(x)[0], rtol=0, atol=0)
        first.layers[0].weight_hh.zero_()  # a copy: the population is untouched
    assert not torch.equal(pop.layers[0].weight_hh[0], first.layers[0].weight_hh)
    torch.testing.assert_close(pop.member(-1).state_dict()["layers.0.weight_hh"],
                               layers[-1].state_dict()["layers.0.weight_hh"], rtol=0, atol=0)


def test_stack_of_members_is_the_population_again_and_leaves_the_rng_alone():
    pop = NormLSTM.stack(member_layers(NormLSTM, "ln"))
    rng = torch.get_rng_state()
    again = NormLSTM.stack([pop.member(m) for m in range(M)])
    assert torch.equal(torch.get_rng_state(), rng)
    for k, v in pop.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k


def test_stack_and_member_errors():
    layers = member_layers(NormLSTM, "bn_recurrent", n=2, num_layers=1, bidirectional=False)
    with pytest.raises(ValueError, match=r"NormLSTM.stack: needs at least one layer"):
        NormLSTM.stack([])
    with pytest.raises(TypeError, match=r"layers\[1\] is a NormRNN, not a NormLSTM"):
        NormLSTM.stack([layers[0], NormRNN(I, H, norm="bn_sum").double()])
    other = NormLSTM(I, H, norm="bn_recurrent", max_steps=9, backend="reference").double()
    with pytest.raises(ValueError, match=r"layers\[1\] has max_steps=9 \(layers\[0\]: 4\)"):
        NormLSTM.stack([layers[0], other])
    layers[1].eval()
    with pytest.raises(ValueError, match=r"layers\[1\] has self.training=False \(layers\[0\]: True\)"):
        NormLSTM.stack(layers)
    layers[1].train()
    layers[1].layers[0].norm_hh.eps = 1e-3
    with pytest.raises(ValueError, match=r"layers.0.norm_hh.eps=0.001 \(layers\[0\]: 1e-05\)"):
        NormLSTM.stack(layers)
    layers[1].layers[0].norm_hh.eps = 1e-5
    with pytest.raises(ValueError, match=r"weight_ih is torch.float32 on cpu, layers\[0\]'s torch.float64"):
        NormLSTM.stack([layers[0], layers[1].float()])
    pop = NormLSTM.stack([layers[0], layers[1].double()])
    with pytest.raises(ValueError, match=r"already a population of 2; stack its members"):
        NormLSTM.stack([pop])
    with pytest.raises(IndexError, match=r"m must be in \[0, 2\)"):
        pop.member(2)
    with pytest.raises(ValueError, match=r"not a population"):
        layers[0].member(0)


# ----------------------------------------------------------------------------- population=None unchanged
@pytest.mark.parametrize("case", list(make_nn_outputs.CASES))
def test_without_a_population_results_are_bit_identical_to_before(case):
    """Exact float64 CPU results depend on torch's kernels too: after a torch upgrade that
    changes them, re-baseline from a trusted checkout (tests/fixtures/make_nn_outputs.py)."""
    expected = torch.load(Path(__file__).parent / "fixtures" / "nn_outputs.pt")[case]
    got = make_nn_outputs.pack(make_nn_outputs.compute(case))
    assert got["keys"] == expected["keys"] and got["shapes"] == expected["shapes"]
    assert torch.equal(got["flat"], expected["flat"]), \
        f"{case}: max |difference| {(got['flat'] - expected['flat']).abs().max().item():.3e}"


# ----------------------------------------------------------------------------- errors
def test_population_input_errors():
    pop = NormLSTM(I, H, norm="bn_input", population=M).double()
    x = torch.randn(T, M, B, I, dtype=f64)
    with pytest.raises(BadInput, match=r"NormLSTM\(population=3\): input must have 4 dimensions, got 3 "
                                        r"\(expected input \(T, 3, B, 3\)"):
        pop(x[:, 0])
    with pytest.raises(BadInput, match=r"input.size\(1\) must be the population size 3"):
        pop(torch.randn(T, 2, B, I, dtype=f64))
    with pytest.raises(BadInput, match=r"Expected hidden\[0\] size \(1, 3, 4, 4\), got \[1, 2, 4, 4\]"):
        pop(x, (torch.zeros(1, 2, B, H, dtype=f64),) * 2)
    with pytest.raises(BadInput, match=r"For batched 4-D input, hx and cx should also be 4-D"):
        pop(x, (torch.zeros(1, B, H, dtype=f64),) * 2)
    with pytest.raises(BadInput, match=r"lengths must be \(M, B\) = \(3, 4\), one per sequence of "
                                        r"each member, or \(B,\) = \(4,\), shared; got shape \(2, 4\)"):
        pop(x, lengths=torch.ones(2, B, dtype=torch.long))
    with pytest.raises(BadInput, match=r"lengths must be \(M, B\)=\(3, 4\) in \[1, 5\]"):
        pop(x, lengths=torch.zeros(M, B, dtype=torch.long))
    with pytest.raises(ValueError, match=r"population must be None or a positive int"):
        NormLSTM(I, H, population=0)
    with pytest.raises(ValueError, match=r"backend='native'.*cannot give each member"):
        NormRNN(I, H, population=2, backend="native")


def test_norm_none_population_runs_our_loop_not_cudnn():
    pop = NormLSTM(I, H, population=2)
    assert pop.resolve_backend(torch.zeros(T, 2, B, I)) == "reference"
    assert pop.resolve_backend(torch.zeros(T, 2, B, I), compiled=True) == "fused"  # as on a GPU
    assert NormLSTM(I, H).resolve_backend(torch.zeros(T, B, I)) == "native"


# ----------------------------------------------------------------------------- GPU tier
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def rel(x, ref):
    return ((x.double() - ref).norm() / ref.norm().clamp_min(1e-12)).item()


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("cls, norm", CASES, ids=IDS)
def test_gpu_fused_population_within_the_references_own_rounding(cls, norm):
    """Compiled kernels with a member axis (fp32, TF32 off, CUDA graphs from the second call)
    and the fp32 reference loop, both against the float64 reference population: the fused
    error stays within 3x the reference's own fp32 rounding error."""
    import copy

    torch.backends.cuda.matmul.allow_tf32 = False
    Tg, Mg, Bg, Hg = 20, 4, 16, 64
    torch.manual_seed(0)
    ref = cls(Hg, Hg, 2, norm=norm, backend="reference", population=Mg).to("cuda", f64)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.rand_like(p))
    ref.train()
    ref(torch.randn(Tg, Mg, Bg, Hg, device="cuda", dtype=f64))  # population statistics != init
    ref32, fus = copy.deepcopy(ref).float(), copy.deepcopy(ref).float()
    fus.backend = "fused"
    # padded, with half of every member's rows full length: a frame-wise statistic over the one
    # or two rows left at a step is so ill-conditioned that either path's rounding is amplified
    lengths = torch.randint(Tg // 2, Tg + 1, (Mg, Bg), device="cuda")
    lengths[:, :Bg // 2] = Tg
    for call in range(3):
        for train in (True, False):
            x = torch.randn(Tg, Mg, Bg, Hg, device="cuda", dtype=f64)
            results = []
            for m, xx in ((ref, x), (ref32, x.float()), (fus, x.float())):
                m.train(train)
                xx = xx.clone().requires_grad_()
                out, _ = m(xx, lengths=lengths)
                (out.square().sum()).backward()
                results.append({"out": out, "dx": xx.grad, **{n: p.grad for n, p in m.named_parameters()},
                                **{n: b for n, b in m.named_buffers() if b.is_floating_point()}})
                m.zero_grad(set_to_none=True)
            a, r, b = results
            for k in a:
                e_fused, e_ref = rel(b[k], a[k]), rel(r[k], a[k])
                assert e_fused <= max(3 * e_ref, 1e-5), \
                    f"call {call} train={train} {k}: fused {e_fused:.2e} vs fp32 reference {e_ref:.2e}"
