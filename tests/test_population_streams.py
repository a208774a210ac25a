"""Per-member dropout streams (bnrnn/nn/streams.py): member m's masks are those its single run
draws — ``torch.manual_seed(s_m)`` then ``F.dropout`` on its own activation, call after call —
bit for bit on CPU, and drawing them leaves the process generator where it was."""
import pytest
import torch
import torch.nn.functional as F

from bnrnn.models.lm import WordLM
from bnrnn.models.population import PopulationLM
from bnrnn.models.speech import FramewiseClassifier
from bnrnn.nn import NormLSTM
from bnrnn.nn.streams import MemberStreams, member_dropout

SEEDS = [3, 1, 4]
M, T, B, H = len(SEEDS), 5, 4, 6
f64 = torch.float64


def singles(xs_per_call, p, seeds=SEEDS):
    """What each member's single run draws: seeded once, then F.dropout on each call's input
    (its own activation, contiguous as a single model's is)."""
    out = []
    for m, s in enumerate(seeds):
        torch.manual_seed(s)
        out.append([F.dropout(x[..., m, :, :].contiguous(), p) for x in xs_per_call])
    return out


def test_member_streams_start_where_a_seeded_single_run_starts():
    streams = MemberStreams.seeded(SEEDS)
    for s, state in zip(SEEDS, streams.states):
        torch.manual_seed(s)
        assert torch.equal(state, torch.get_rng_state())


def test_member_dropout_draws_each_members_single_run_masks():
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(T, M, B, H, generator=g, dtype=f64) for _ in range(2)]
    expected = singles(xs, 0.5)
    streams = MemberStreams.seeded(SEEDS)
    torch.manual_seed(123)
    outside = torch.get_rng_state()
    got = [member_dropout(x, 0.5, True, streams) for x in xs]  # the stream advances between calls
    assert torch.equal(torch.get_rng_state(), outside)  # the process generator is untouched
    for m in range(M):
        for call in range(2):
            assert torch.equal(got[call][:, m], expected[m][call]), (m, call)
    assert not torch.equal(got[0][:, 0] == 0, got[1][:, 0] == 0)  # two calls, two masks
    # a population stream is not the one process stream it replaced
    torch.manual_seed(SEEDS[0])
    assert not torch.equal(F.dropout(xs[0], 0.5)[:, 0], got[0][:, 0])


def test_member_dropout_slices_are_made_contiguous():
    """The CPU mask follows memory order: for x in another layout (here permuted) a member's
    strided slice would get another mask than the single run's contiguous (T, B, F) — it fails
    without the slice made contiguous."""
    x = torch.randn(B, M, T, H, dtype=f64).transpose(0, 2)  # (T, M, B, H), permuted strides
    expected = singles([x.contiguous()], 0.3)
    got = member_dropout(x, 0.3, True, MemberStreams.seeded(SEEDS))
    for m in range(M):
        assert torch.equal(got[:, m], expected[m][0])


def test_member_dropout_without_streams_or_training_is_plain_dropout():
    x = torch.randn(T, M, B, H)
    torch.manual_seed(7)
    plain = F.dropout(x, 0.5)
    torch.manual_seed(7)
    assert torch.equal(member_dropout(x, 0.5, True, None), plain)
    streams = MemberStreams.seeded(SEEDS)
    before = [s.clone() for s in streams.states]
    assert member_dropout(x, 0.5, False, streams) is x
    assert member_dropout(x, 0.0, True, streams) is x
    assert all(torch.equal(a, b) for a, b in zip(before, streams.states))  # nothing drawn


def test_member_dropout_refuses_a_shape_or_device_it_has_no_streams_for():
    streams = MemberStreams.seeded(SEEDS)
    with pytest.raises(ValueError, match=r"\(\.\.\., M=3, B, F\)"):
        member_dropout(torch.randn(T, 2, B, H), 0.5, True, streams)
    streams.device = torch.device("cuda", 0)  # as if built for a GPU
    with pytest.raises(ValueError, match="streams of its device"):
        member_dropout(torch.randn(T, M, B, H), 0.5, True, streams)


def test_streams_state_dict_continues_every_stream():
    streams = MemberStreams.seeded(SEEDS)
    x = torch.randn(T, M, B, H)
    member_dropout(x, 0.5, True, streams)
    saved = streams.state_dict()
    after = member_dropout(x, 0.5, True, streams)
    restored = MemberStreams.seeded([0, 0, 0])
    restored.load_state_dict(saved)
    assert torch.equal(member_dropout(x, 0.5, True, restored), after)
    with pytest.raises(ValueError, match="load them where they were saved"):
        MemberStreams.seeded([0, 0]).load_state_dict(saved)


def test_stack_dropout_between_layers_draws_each_members_stream():
    """NormLSTM(population=M) with dropout between its three layers: member m's output and
    gradient are those of its own layer alone, seeded with s_m (float64)."""
    def layer():
        return NormLSTM(3, H, num_layers=3, dropout=0.4, norm="bn_input", max_steps=T).to(f64)

    alone = []
    for s in SEEDS:
        torch.manual_seed(s)
        alone.append(layer())
    pop = type(alone[0]).stack(alone)
    pop.member_streams = MemberStreams.seeded(SEEDS)
    x = torch.randn(T, M, B, 3, dtype=f64, requires_grad=True)
    out, _ = pop(x)
    out.sum().backward()
    for m, (s, single) in enumerate(zip(SEEDS, alone)):
        xm = x.detach()[:, m].clone().requires_grad_()
        torch.manual_seed(s)
        ref, _ = single(xm)
        ref.sum().backward()
        torch.testing.assert_close(out[:, m], ref, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(x.grad[:, m], xm.grad, rtol=1e-10, atol=1e-13)


def test_a_word_lm_population_with_streams_is_each_model_alone():
    """Embedding dropout, between-layer dropout and output dropout of PopulationLM draw member
    m's stream: each member's loss is its model's, seeded with s_m, two batches in a row."""
    V = 11
    models = []
    for s in SEEDS:
        torch.manual_seed(s)
        models.append(WordLM(V, hidden_size=H, num_layers=2, dropout=0.5).to(f64))
    pop = PopulationLM.stack(models).use_streams(MemberStreams.seeded(SEEDS))
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(V, (T + 1, M, B), generator=g) for _ in range(2)]
    outs = [pop((ids[:-1], ids[1:])).loss_sum for ids in batches]
    for m, s in enumerate(SEEDS):
        torch.manual_seed(s)
        for call, ids in enumerate(batches):
            alone = models[m]((ids[:-1, m], ids[1:, m]))
            torch.testing.assert_close(outs[call][m], alone.loss_sum, rtol=1e-6, atol=0)
    assert type(pop.member(0)) is WordLM  # member(m) stays an ordinary model
    assert isinstance(pop.member(0).drop, torch.nn.Dropout)


def test_a_speech_population_with_streams_is_each_classifier_alone():
    """The speech classifier's bidirectional stack drops out between layers per member stream."""
    F_, C = 3, 5
    models = []
    for s in SEEDS:
        torch.manual_seed(s)
        models.append(FramewiseClassifier(F_, C, hidden_size=4, num_layers=3, dropout=0.5,
                                          norm="bn_input").to(f64))
    pop = PopulationLM.stack(models).use_streams(MemberStreams.seeded(SEEDS))
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([T, 3, 4, 2])
    features = torch.randn(T, B, F_, generator=g, dtype=f64)
    labels = torch.randint(C, (T, B), generator=g)
    labels[torch.arange(T)[:, None] >= lengths[None, :]] = -100
    out = pop((features, lengths, labels))
    for m, s in enumerate(SEEDS):
        torch.manual_seed(s)
        alone = models[m]((features, lengths, labels))
        torch.testing.assert_close(out.loss_sum[m], alone.loss_sum, rtol=1e-6, atol=0)


def test_use_streams_needs_one_stream_per_member_on_the_models_device():
    pop = PopulationLM.stack([WordLM(11, hidden_size=H, dropout=0.5) for _ in SEEDS])
    with pytest.raises(ValueError, match="3 members.*2 streams"):
        pop.use_streams(MemberStreams.seeded([1, 2]))
    with pytest.raises(TypeError, match="needs a MemberStreams"):
        pop.use_streams(SEEDS)  # seeds, not streams
    meta = PopulationLM.stack([WordLM(11, hidden_size=H, dropout=0.5) for _ in SEEDS]).to("meta")
    with pytest.raises(ValueError, match="cpu generator states, the model is on meta"):
        meta.use_streams(MemberStreams.seeded(SEEDS))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_member_masks_are_each_seeds_cuda_masks():
    """On CUDA (ATen's fused native_dropout from the device's generator): member m's masks are
    those of manual_seed(s_m) + F.dropout on its own contiguous activation, call after call, and
    the outside CUDA generator state is untouched."""
    device = torch.device("cuda", torch.cuda.current_device())
    xs = [torch.randn(35, M, 20, 650, device=device) for _ in range(2)]
    expected = singles(xs, 0.5)
    streams = MemberStreams.seeded(SEEDS, device)
    for s, state in zip(SEEDS, streams.states):
        torch.manual_seed(s)
        assert torch.equal(state, torch.cuda.get_rng_state(device))
    torch.manual_seed(123)
    outside = torch.cuda.get_rng_state(device)
    got = [member_dropout(x, 0.5, True, streams) for x in xs]
    assert torch.equal(torch.cuda.get_rng_state(device), outside)
    for m in range(M):
        for call in range(2):
            assert torch.equal(got[call][:, m], expected[m][call]), (m, call)
