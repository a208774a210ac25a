"""Per-member random streams: a population's dropout masks, each member's drawn as its single
run draws them.

A single run draws every dropout mask from the default generator of its device (the CPU
generator; on CUDA the device's default CUDA generator, through ATen's fused native_dropout),
seeded with the run's seed. A population of M runs (docs/population.md) keeps M states of that
generator, one per member: :class:`MemberStreams`. ``member(m)`` swaps member m's state into the
device's default generator, lets torch's own ``F.dropout`` draw member m's mask from it, saves the
advanced state back and restores the outside one. Member m's draw therefore has the generator
state, the shape (its (..., B, F) slice, contiguous like the single run's activation) and the
place in the order of draws of its single run's draw, so its mask is bit-identical to the single
run's: tested on CPU (tests/test_population_streams.py); on CUDA it holds by the same argument
(the same Philox seed and offset, the same kernel for the same contiguous shape); its GPU test
(tests/test_population_streams.py, ``-m gpu``) has not run yet.

:func:`member_dropout` is dropout of a population activation x (..., M, B, F): with streams,
member m's slice x[..., m, :, :] through ``F.dropout`` inside ``streams.member(m)``; without,
``F.dropout`` of the whole tensor from the one process generator (one mask stream for all).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

DEVICES = ("cpu", "cuda")  # the kinds of device whose default generator a stream can stand in for


def _device(device) -> torch.device:
    """A torch.device, a CUDA one with its index filled in (the generator is per device)."""
    device = torch.device(device)
    if device.type not in DEVICES:
        raise ValueError(f"MemberStreams: device must be one of {', '.join(DEVICES)}; got {device}")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def generator_state(device="cpu") -> Tensor:
    """The state of ``device``'s default generator now (a CPU ByteTensor)."""
    device = _device(device)
    return torch.get_rng_state() if device.type == "cpu" else torch.cuda.get_rng_state(device)


def set_generator_state(state: Tensor, device="cpu") -> None:
    device = _device(device)
    if device.type == "cpu":
        torch.set_rng_state(state)
    else:
        torch.cuda.set_rng_state(state, device)


class MemberStreams:
    """M states of ``device``'s default generator, state m being member m's random stream
    (module doc). Not a module: it holds no parameters, and a checkpoint carries it through
    :meth:`state_dict` / :meth:`load_state_dict`."""

    def __init__(self, states: Sequence[Tensor], device="cpu"):
        states = list(states)
        if not states:
            raise ValueError("MemberStreams: needs one generator state per member; got none")
        self.device = _device(device)
        self.states = [s.detach().cpu().clone() for s in states]

    @classmethod
    def seeded(cls, seeds: Sequence[int], device="cpu") -> "MemberStreams":
        """Member m's stream is ``device``'s default generator right after torch.manual_seed(seeds[m])."""
        device = _device(device)
        return cls([torch.Generator(device).manual_seed(int(s)).get_state() for s in seeds], device)

    def __len__(self) -> int:
        return len(self.states)

    @contextlib.contextmanager
    def member(self, m: int) -> Iterator[None]:
        """Within the block, the device's default generator is member m's stream; after it,
        member m's stream has advanced by what the block drew and the outside state is back."""
        outside = generator_state(self.device)
        set_generator_state(self.states[m], self.device)
        try:
            yield
        finally:
            self.states[m] = generator_state(self.device)
            set_generator_state(outside, self.device)

    def state_dict(self) -> dict:
        return {"device": self.device.type, "states": [s.clone() for s in self.states]}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a :meth:`state_dict`: the same number of members, saved on the same
        kind of device (a CPU generator's state is no CUDA generator's)."""
        if state["device"] != self.device.type or len(state["states"]) != len(self):
            raise ValueError(f"MemberStreams.load_state_dict: the saved streams are {len(state['states'])} "
                             f"{state['device']} generator states; these are {len(self)} "
                             f"{self.device.type} ones: load them where they were saved")
        self.states = [s.detach().cpu().clone() for s in state["states"]]

    def __repr__(self) -> str:
        return f"MemberStreams({len(self)} members, {self.device})"


def member_dropout(x: Tensor, p: float, training: bool, streams: MemberStreams | None) -> Tensor:
    """Dropout of a population activation x (..., M, B, F). ``streams`` None: ``F.dropout`` of
    the whole tensor (one mask stream for every member). With streams: member m's slice, made
    contiguous, through ``F.dropout`` inside ``streams.member(m)`` (its single run's mask, module
    doc), the results stacked back on axis -3. Outside training or with p = 0 nothing is drawn."""
    if streams is None or not training or p == 0:
        return F.dropout(x, p, training)
    if x.dim() < 3 or x.shape[-3] != len(streams):
        raise ValueError(f"member_dropout: x must be (..., M={len(streams)}, B, F), one slice per "
                         f"member stream; got {tuple(x.shape)}")
    if _device(x.device) != streams.device:
        raise ValueError(f"member_dropout: the streams are {streams.device} generator states, x is "
                         f"on {x.device}; give the model streams of its device after moving it")
    out = []
    for m in range(len(streams)):
        with streams.member(m):
            out.append(F.dropout(x.select(-3, m).contiguous(), p, True))
    return torch.stack(out, dim=-3)


__all__ = ["MemberStreams", "generator_state", "member_dropout", "set_generator_state"]
