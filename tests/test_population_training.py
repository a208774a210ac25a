"""Per-member training (bnrnn/population.py): member m of a population is updated, clipped and
scheduled exactly as an ordinary model holding member m's parameters alone would be by
``torch.optim.SGD`` or ``torch.optim.Adam``, ``torch.nn.utils.clip_grad_norm_`` and
``bnrnn.schedules.decay_after``."""
import io

import pytest
import torch
from torch import nn

from bnrnn.population import (FrozenMembers, MemberSchedule, PopulationAdam, PopulationSchedule,
                              PopulationSGD, clip_grad_norm_per_member)
from bnrnn.schedules import decay_after

M = 3
SHAPES = [(5, 7), (7,), (3, 2, 4)]  # odd sizes: no member's slice aligns with a vector width


def population_params(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(M, *s, generator=g, dtype=dtype)) for s in SHAPES]


def set_grads(params, step, scale=1.0):
    g = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = scale * torch.randn(p.shape, generator=g, dtype=p.dtype)
        p.grad[1] *= 10  # member 1 has much larger gradients: a shared norm would clip the rest


def member_alone(params, m):
    return [nn.Parameter(p.detach()[m].clone()) for p in params]


HPARAMS = {  # every member its own values; members 0 and 2 alike (one foreach group of two)
    "distinct": dict(lr=[0.1, 0.42, 1.0], momentum=[0.0, 0.95, 0.5], dampening=[0.0, 0.0, 0.1],
                     weight_decay=[0.0, 1e-3, 0.0], nesterov=[False, True, False]),
    "shared": dict(lr=[0.3, 0.42, 0.3], momentum=[0.9, 0.95, 0.9], dampening=[0.0, 0.0, 0.0],
                   weight_decay=[1e-3, 0.0, 1e-3], nesterov=[True, False, True]),
}


def assert_matches_torch_per_member(population_class, torch_class, hp, dtype, steps):
    """``population_class`` over a population against M ``torch_class`` optimizers, one on each
    member's parameters alone, fed the same gradients: equal bit for bit after every step."""
    pop = population_params(dtype=dtype)
    alone = [member_alone(pop, m) for m in range(M)]
    opt = population_class(pop, M, **hp)
    refs = [torch_class(alone[m], **{k: v[m] for k, v in hp.items()}) for m in range(M)]
    for step in range(steps):
        set_grads(pop, step)
        grads_to_members(pop, alone)
        opt.step()
        for ref in refs:
            ref.step()
        assert_members_equal(pop, alone, step)
    return pop, alone, opt, refs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("hparams", list(HPARAMS))
def test_sgd_matches_torch_sgd_per_member_bit_for_bit(dtype, hparams):
    # four steps: the first seeds the momentum buffers, later ones use them
    assert_matches_torch_per_member(PopulationSGD, torch.optim.SGD, HPARAMS[hparams], dtype, 4)


def grads_to_members(pop, alone):
    for m, params in enumerate(alone):
        for p, q in zip(params, pop):
            p.grad = q.grad[m].clone()


def assert_members_equal(pop, alone, step):
    for m, params in enumerate(alone):
        for p, q in zip(params, pop):
            assert torch.equal(p.detach(), q.detach()[m]), (step, m)


ADAM = {  # members 0 and 2 alike (one call of torch's adam over both); member 1 its own
    "distinct": dict(lr=[2e-3, 1e-2, 5e-4], betas=[(0.9, 0.999), (0.8, 0.99), (0.5, 0.9)],
                     eps=[1e-8, 1e-6, 1e-4], weight_decay=[0.0, 1e-2, 0.1],
                     amsgrad=[False, True, False]),
    "shared": dict(lr=[2e-3, 1e-2, 2e-3], betas=[(0.9, 0.999), (0.8, 0.99), (0.9, 0.999)],
                   eps=[1e-8, 1e-8, 1e-8], weight_decay=[1e-2, 0.0, 1e-2], amsgrad=[True, False, True]),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("hparams", list(ADAM))
def test_adam_matches_torch_adam_per_member_bit_for_bit(dtype, hparams):
    # five steps: the bias corrections change with every step
    pop, alone, opt, refs = assert_matches_torch_per_member(PopulationAdam, torch.optim.Adam,
                                                            ADAM[hparams], dtype, 5)
    for m in range(M):  # the moments and step counts are each member's own too
        for p, q in zip(alone[m], pop):
            ours, theirs = opt.state[q], refs[m].state[p]
            assert ours["step"][m] == theirs["step"] == 5
            for key in theirs.keys() - {"step"}:
                assert torch.equal(ours[key][m], theirs[key]), (m, key)


def test_adam_frozen_member_and_checkpoint_resume():
    """A frozen member's parameters, moments and step count stay; a reloaded optimizer goes on
    exactly as the original (and each member as torch's Adam would)."""
    hp = dict(lr=[1e-2, 3e-3, 1e-3], weight_decay=[0.0, 0.1, 1e-3])
    pop = population_params()
    alone = [member_alone(pop, m) for m in range(M)]
    opt = PopulationAdam(pop, M, **hp)
    refs = [torch.optim.Adam(alone[m], **{k: v[m] for k, v in hp.items()}) for m in range(M)]

    def step(optimizer, params, k, live=range(M)):
        set_grads(params, k)
        grads_to_members(params, alone)
        optimizer.step()
        for m in live:
            refs[m].step()

    step(opt, pop, 0)
    opt.freeze(1)
    before = [p.detach()[1].clone() for p in pop]
    state = {k: v.clone() for k, v in opt.state[pop[0]].items()}
    step(opt, pop, 1, live=(0, 2))
    assert all(torch.equal(p.detach()[1], b) for p, b in zip(pop, before))
    assert opt.state[pop[0]]["step"].tolist() == [2, 1, 2]
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(opt.state[pop[0]][key][1], state[key][1])
        assert not torch.equal(opt.state[pop[0]][key][0], state[key][0])
    # resume: a fresh population optimizer from the state dict (through a save) continues alike
    copy = [nn.Parameter(p.detach().clone()) for p in pop]
    again = PopulationAdam(copy, M, lr=1.0)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    again.load_state_dict(torch.load(io.BytesIO(buffer.getvalue())))
    assert again.frozen == {1} and again.param_groups[0]["lr"] == hp["lr"]
    for k in (2, 3):
        step(opt, pop, k, live=(0, 2))
        set_grads(copy, k)
        again.step()
        for p, q in zip(pop, copy):
            assert torch.equal(p.detach(), q.detach()), k
    for m in (0, 2):
        assert all(torch.equal(a.detach(), q.detach()[m]) for a, q in zip(alone[m], pop)), m
    assert all(torch.equal(p.detach()[1], b) for p, b in zip(pop, before))


def test_adam_refuses_bad_hyper_parameters():
    param = [nn.Parameter(torch.zeros(M, 2))]
    with pytest.raises(ValueError, match="betas: every member's value must be a pair of numbers in"):
        PopulationAdam(param, M, betas=[(0.9, 0.999), (0.9, 1.0), (0.9, 0.999)])
    with pytest.raises(ValueError, match="betas: 2 values for a population of 3"):
        PopulationAdam(param, M, betas=[(0.9, 0.999), (0.9, 0.99)])
    with pytest.raises(ValueError, match=r"betas: every member's value must be a pair .* got 0.9"):
        PopulationAdam(param, M, betas=0.9)
    with pytest.raises(ValueError, match="eps: 2 values for a population of 3"):
        PopulationAdam(param, M, eps=[1e-8, 1e-8])
    with pytest.raises(ValueError, match="amsgrad: every member's value must be true or false"):
        PopulationAdam(param, M, amsgrad="yes")

def test_clipping_uses_each_members_own_norm():
    pop = population_params()
    set_grads(pop, 0)
    alone = [member_alone(pop, m) for m in range(M)]
    for m in range(M):
        for p, q in zip(alone[m], pop):
            p.grad = q.grad[m].clone()
    limits = [1.0, 5.0, None]
    norms = clip_grad_norm_per_member(pop, limits, M)
    for m in range(M):
        expected = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in alone[m]]))
        if limits[m] is None:
            got = nn.utils.get_total_norm([p.grad for p in alone[m]])
        else:
            got = nn.utils.clip_grad_norm_(alone[m], limits[m])
        assert norms[m].item() == pytest.approx(expected.item(), rel=1e-5)
        assert norms[m].item() == got.double().item()
        for p, q in zip(alone[m], pop):
            assert torch.equal(p.grad, q.grad[m]), m
    # a shared (population) norm would have clipped member 0 far more than its own does
    shared = torch.linalg.vector_norm(norms)
    assert 1.0 / shared < 1.0 / norms[0] / 2


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")  # no steps needed
@pytest.mark.parametrize("optimizer", [PopulationSGD, PopulationAdam])
def test_schedule_matches_decay_after_per_member(optimizer):
    pop = population_params()
    lrs = [1.0, 0.5, 0.3]
    specs = [MemberSchedule(0.5, 6, 1), MemberSchedule(), MemberSchedule(0.25, 2, 2)]
    opt = optimizer(pop, M, lr=lrs)
    sched = PopulationSchedule(opt, specs)
    refs = []
    for m in (0, 2):
        o = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lrs[m])
        refs.append((m, o, decay_after(o, specs[m].decay, specs[m].after_epoch, specs[m].every)))
    for epoch in range(12):
        for m, o, _ in refs:
            assert opt.param_groups[0]["lr"][m] == o.param_groups[0]["lr"], (epoch, m)
        assert opt.param_groups[0]["lr"][1] == lrs[1]
        sched.step()
        for _, _, s in refs:
            s.step()
    # a reloaded schedule continues where it was
    again = PopulationSchedule(optimizer(pop, M, lr=lrs), specs)
    again.load_state_dict(sched.state_dict())
    assert again.optimizer.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


class _Stats(nn.Module):
    """A population model with one parameter and one running statistic per member."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(M, 2))
        self.register_buffer("running", torch.zeros(M, 2))
        self.register_buffer("table", torch.eye(4), persistent=False)  # a constant: not frozen

    def forward(self, x):
        self.running.add_(x.mean(-2).detach())
        return (self.w.unsqueeze(-2) * x).sum()


def test_frozen_member_parameters_buffers_and_momentum_do_not_change():
    model = _Stats()
    opt = PopulationSGD(model.parameters(), M, lr=0.1, momentum=0.9)
    frozen = FrozenMembers(model, opt)

    def step(seed):
        x = torch.randn(M, 5, 2, generator=torch.Generator().manual_seed(seed))
        opt.zero_grad()
        model(x).backward()
        frozen.restore()
        opt.step()

    step(0)
    frozen.freeze(1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    buf = opt.state[model.w]["momentum_buffer"].clone()
    for s in range(1, 4):
        step(s)
    after = model.state_dict()
    for k in before:
        assert torch.equal(after[k][1], before[k][1]), k
        assert not torch.equal(after[k][0], before[k][0]), k  # the others go on
    assert torch.equal(opt.state[model.w]["momentum_buffer"][1], buf[1])
    # the frozen set survives a checkpoint
    opt2 = PopulationSGD(model.parameters(), M, lr=0.1, momentum=0.9)
    FrozenMembers(model, opt2).load_state_dict(frozen.state_dict())
    opt2.load_state_dict(opt.state_dict())
    assert opt2.frozen == {1}


def test_a_parameter_without_the_member_axis_is_refused():
    shared = nn.Parameter(torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"parameter 1 has shape \(4, 2\).*leading member axis of 3"):
        PopulationSGD([nn.Parameter(torch.zeros(M, 2)), shared], M, lr=0.1)
    with pytest.raises(ValueError, match="parameter b"):
        PopulationSGD({"a": nn.Parameter(torch.zeros(M)), "b": nn.Parameter(torch.zeros(()))}, M, lr=0.1)
    with pytest.raises(ValueError, match="lr: 2 values for a population of 3"):
        PopulationSGD([nn.Parameter(torch.zeros(M))], M, lr=[0.1, 0.2])
