"""Checkpoints: state_dicts, optimizer, scheduler, RNG states, epoch/step and the resolved
config — plain tensors and containers only, loadable with ``torch.load(weights_only=True)``
(no pickled modules). Writes are atomic (temp file + rename)."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from bnrnn.io import torch_save


def rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),  # the Mersenne state as ints (weights_only-safe)
        "python_gauss": random.getstate()[2],
        "numpy": {k: v for k, v in zip(("key", "pos", "has_gauss", "cached"),
                                       np.random.get_state()[1:])},
    }
    state["numpy"]["key"] = torch.from_numpy(state["numpy"]["key"].astype(np.int64))
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state["python_gauss"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: str | Path, state: dict) -> None:
    torch_save(path, state)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read; the message names the file and what to do."""


def load(path: str | Path, device: torch.device | str = "cpu") -> dict | None:
    """The state saved at ``path`` (None if there is no file there), tensors on ``device``.

    Only tensors and plain containers are accepted (``weights_only=True``): a file that is
    truncated, corrupt or holds anything else raises :class:`CheckpointError`.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ... by cause
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {reason[:200]}); it is "
            "truncated or corrupt, or was not written by bnrnn. Move it away to start the run "
            "afresh in another directory, or restore a good copy") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a bnrnn "
                              "state dict; restore a good copy or start afresh elsewhere")
    # RNG states must live on the CPU whatever map_location says.
    if "rng" in state:
        state["rng"]["torch"] = state["rng"]["torch"].cpu()
        if "cuda" in state["rng"]:
            state["rng"]["cuda"] = [s.cpu() for s in state["rng"]["cuda"]]
    return state
