"""Learning-rate schedules, stepped once per epoch."""
from __future__ import annotations

from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def _decay_factor(epochs_done: int, decay: float, after_epoch: int) -> float:
    # Epoch e (1-based) runs after e - 1 scheduler steps and uses decay ** max(0, e - after).
    return decay ** max(0, epochs_done + 1 - after_epoch)


def decay_after(optimizer: Optimizer, decay: float, after_epoch: int) -> LambdaLR:
    """lr_e = lr_0 * decay ** max(0, e - after_epoch): constant for ``after_epoch`` epochs, then
    multiplied by ``decay`` every epoch (Zaremba et al.; PTB small: 0.5 after 6, medium: 1/1.2
    after 6, large: 1/1.15 after 15)."""
    return LambdaLR(optimizer, partial(_decay_factor, decay=decay, after_epoch=after_epoch))
