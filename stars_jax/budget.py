"""Wall-time budgets: how many rounds fit, and when to stop.

With ``distill.time_budget_s > 0`` the main job aims to finish (final evaluation included)
within that many seconds of wall time, counted from the job's start (teacher loading and
compilation included) and carried across resumes. ``distill.rounds`` becomes an upper bound.
After ``CALIBRATION_ROUNDS`` rounds the job measures its steady round time, plans the number
of rounds that fit, and fits the learning-rate schedule to them (``TrainState.total_steps``),
so the cosine reaches 0 when the time is up rather than being cut off half-way. Should
rounds slow down later, it stops early anyway rather than overrun.
"""

from __future__ import annotations

import math
import statistics

# Rounds timed before planning: the first compiles every step, the next ones are steady.
CALIBRATION_ROUNDS = 3


def round_seconds(iteration_seconds: list[float]) -> float:
    """A round's wall time, evaluations and checkpoints amortised in, without compilation:
    the mean over this process's rounds but its first (which compiles every step). 0 while
    only the first is known: the job then runs one more round to find out, since stopping on
    a compile-inflated estimate could end a run that had time for many rounds."""
    rest = iteration_seconds[1:]
    return statistics.fmean(rest) if rest else 0.0


def plan_rounds(
    budget_s: float,
    elapsed_s: float,
    rounds_done: int,
    round_s: float,
    reserve_s: float,
    max_rounds: int,
) -> int:
    """The total number of rounds that fit: those done plus as many ``round_s`` rounds as
    the time left after ``reserve_s`` (the final evaluation and save) allows, at most
    ``max_rounds`` and at least ``rounds_done``."""
    left = budget_s - elapsed_s - reserve_s
    more = math.floor(left / round_s) if round_s > 0 else max_rounds
    return max(rounds_done, min(max_rounds, rounds_done + max(more, 0)))


def next_round_fits(budget_s: float, elapsed_s: float, round_s: float, reserve_s: float) -> bool:
    return elapsed_s + round_s + reserve_s <= budget_s
