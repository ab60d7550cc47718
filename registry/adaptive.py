"""Success-rate routing (issue 38): a bandit over each instance's recent outcomes.

A rule whose target has ``"mode": "success_rate"`` orders its usable instances by
Thompson sampling: for each, a draw from Beta(approved + 1, not approved + 1) over the
windowed counts of its segment (registry.adaptive.ArmStats, tempered, below), highest
first. The draws come from a generator seeded by the payment's idempotency key, so a
payment's retries and redeliveries get the same order. Two guards:

* **Exploration floor**: with probability ``exploration`` per eligible instance (2% by
  default) the primary is chosen uniformly, so an instance that lost the lead keeps being
  measured and is found again when it recovers.
* **Elimination**: an instance with at least ``min_samples`` windowed attempts and a
  success rate under ``eliminate_below`` is left out of the route (the explanation says
  so), unless every instance is under it.

The counts are read, never written, here: the registry keeps a snapshot that the workers'
ledger refreshes from payment attempts every few seconds (workers.ledger.outcomes).
``temper`` sharpens the posterior (counts x2 by default): the windows are short so that a
change is seen fast, and without it the runners-up of a short window are explored more
than the floor needs (``python -m bench.routing`` measures both).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from registry.instances import InstanceView

DEFAULT_EXPLORATION = 0.02
DEFAULT_TEMPER = 2.0
DEFAULT_SEGMENT = ("currency", "payment_method")


@dataclass(frozen=True)
class ArmStats:
    """An instance's windowed outcomes in one segment. Customer abandonment (pending
    checkouts) and configuration refusals are not counted: they say nothing of it."""

    approved: int = 0
    declined: int = 0  # by the issuer
    failed: int = 0  # by the provider: unavailable, no answer, a processing error

    @property
    def attempts(self) -> int:
        return self.approved + self.declined + self.failed

    @property
    def rate(self) -> float | None:
        return self.approved / self.attempts if self.attempts else None

    def __add__(self, other: ArmStats) -> ArmStats:
        return ArmStats(
            self.approved + other.approved,
            self.declined + other.declined,
            self.failed + other.failed,
        )


@dataclass(frozen=True)
class Adaptive:
    """A rule target's success-rate parameters (registry.rules.Rule)."""

    exploration: float = DEFAULT_EXPLORATION
    eliminate_below: float | None = None
    min_samples: int = 20
    segment_by: tuple[str, ...] = DEFAULT_SEGMENT
    temper: float = DEFAULT_TEMPER


def segment_of(values: dict[str, Any], segment_by: Sequence[str]) -> tuple[Any, ...]:
    """The values of the segment's fields for a payment (its RouteFacts.values()), in order."""
    return tuple(values.get(name) for name in segment_by)


# (segment fields, their values for a payment, instance id) -> its windowed outcomes
StatsReader = Callable[[tuple[str, ...], tuple[Any, ...], uuid.UUID], ArmStats]


def no_stats(_fields: tuple[str, ...], _values: tuple[Any, ...], _id: uuid.UUID) -> ArmStats:
    return ArmStats()


def order_by_success(
    candidates: Sequence[InstanceView],
    arms: Sequence[ArmStats],
    seed: int,
    params: Adaptive,
) -> tuple[list[InstanceView], list[tuple[InstanceView, str]], bool]:
    """The candidates ordered by Thompson sampling, the eliminated ones with why, and
    whether the primary was an exploration pick. ``arms[i]`` is ``candidates[i]``'s."""
    eligible: list[tuple[InstanceView, ArmStats]] = []
    eliminated: list[tuple[InstanceView, str]] = []
    floor = params.eliminate_below
    for view, arm in zip(candidates, arms, strict=True):
        rate = arm.rate
        measured = rate is not None and arm.attempts >= params.min_samples
        if floor is not None and measured and rate is not None and rate < floor:
            eliminated.append(
                (
                    view,
                    f"eliminated: success rate {rate:.0%} under {floor:.0%} "
                    f"over {arm.attempts} recent attempts",
                )
            )
            continue
        eligible.append((view, arm))
    if not eligible:  # every one is under the threshold: route anyway, best first
        eligible = list(zip(candidates, arms, strict=True))
        eliminated = []
    rng = random.Random(seed)
    draw = rng.random()
    temper = params.temper
    scored = [
        (
            rng.betavariate(temper * arm.approved + 1, temper * (arm.declined + arm.failed) + 1),
            view,
        )
        for view, arm in eligible
    ]
    scored.sort(key=lambda entry: -entry[0])
    order = [view for _, view in scored]
    explored = draw < params.exploration * len(eligible)
    if explored:
        chosen = eligible[int(draw / params.exploration)][0]
        order.remove(chosen)
        order.insert(0, chosen)
    return order, eliminated, explored
