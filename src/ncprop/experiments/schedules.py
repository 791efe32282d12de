"""Learning-rate schedules as plain functions of the step: the training loop, the batched engine and
the theory's closed-form NC0 predictions all read the same per-step values.

- ``"step"``: the paper's schedule, ``lr / 10`` from epoch ``epochs // 3`` and ``lr / 100`` from
  epoch ``2 * epochs // 3`` (200 epochs: drops at 66 and 133).
- ``"cosine"``: linear warm-up over the first ``warmup`` fraction of the steps (from ``lr / warmup_steps``
  up to ``lr``), then ``lr * (1 + cos(pi * progress)) / 2`` down to 0.
- ``"constant"``: ``lr`` throughout.
"""

from __future__ import annotations

import math

from ncprop._validation import check_choice, check_positive_int, check_unit_interval

SCHEDULES = ("step", "cosine", "constant")


def lr_factor(schedule: str, step: int, *, steps_per_epoch: int, epochs: int, warmup: float = 0.0) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based)."""
    check_choice("schedule", schedule, SCHEDULES)
    check_positive_int("steps_per_epoch", steps_per_epoch)
    check_positive_int("epochs", epochs)
    check_unit_interval("warmup", warmup)
    if schedule == "constant":
        return 1.0
    if schedule == "step":
        epoch = step // steps_per_epoch
        return 0.1 ** ((epoch >= epochs // 3) + (epoch >= 2 * epochs // 3)) if epochs >= 3 else 1.0
    total = steps_per_epoch * epochs
    warm = int(round(warmup * total))
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(total - warm, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def lr_sequence(schedule: str, lr: float, *, steps_per_epoch: int, epochs: int, warmup: float = 0.0) -> list[float]:
    """``[lr * lr_factor(schedule, t, ...) for t in range(steps_per_epoch * epochs)]``."""
    return [lr * lr_factor(schedule, t, steps_per_epoch=steps_per_epoch, epochs=epochs, warmup=warmup)
            for t in range(steps_per_epoch * epochs)]
