"""Flap counting for replica curves: what the autoscaler's tests and ``bench/autoscale_reaction.py``
measure the autoscaler by (the operator itself never counts flaps)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence


def count_flaps(replicas: Sequence[int], interval: float = 1.0, window: float = math.inf) -> int:
    """Flaps in a replica curve sampled every ``interval`` seconds: direction reversals that
    come less than ``window`` seconds after the previous change (up then soon down, or down
    then soon up). A scale-down long after a burst ended is not a flap."""
    flaps, last_dir, last_at = 0, 0, -math.inf
    for i, (a, b) in enumerate(itertools.pairwise(replicas)):
        step = (b > a) - (b < a)
        if not step:
            continue
        now = (i + 1) * interval
        if last_dir and step != last_dir and now - last_at < window:
            flaps += 1
        last_dir, last_at = step, now
    return flaps
