"""Learning-rate schedules, stepped once per epoch."""
from __future__ import annotations

import math
from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def _decay_factor(epochs_done: int, decay: float, after_epoch: int, every: int) -> float:
    # Epoch e (1-based) runs after e - 1 scheduler steps.
    return decay ** math.ceil(max(0, epochs_done + 1 - after_epoch) / every)


def decay_after(optimizer: Optimizer, decay: float, after_epoch: int, every: int = 1) -> LambdaLR:
    """lr_e = lr_0 * decay ** ceil(max(0, e - after_epoch) / every), e = 1, 2, ...

    ``every=1``: constant for ``after_epoch`` epochs, then multiplied by ``decay`` every epoch
    (Zaremba et al.; PTB small: 0.5 after 6, medium: 1/1.2 after 6, large: 1/1.15 after 15).
    ``every=after_epoch=k``: multiplied by ``decay`` once every k epochs, from epoch k + 1 on
    (the authors' ``DecayEvery(k * batches)``, docs/protocols.md).
    """
    if every < 1:
        raise ValueError(f"schedule.every must be >= 1; got {every}")
    return LambdaLR(optimizer, partial(_decay_factor, decay=decay, after_epoch=after_epoch, every=every))
