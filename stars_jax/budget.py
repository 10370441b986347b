"""Wall-time budgets: how many rounds fit, and when to stop.

With ``distill.time_budget_s > 0`` the main job aims to finish (final evaluation included)
within that many seconds of wall time, counted from the job's start (teacher loading and
compilation included) and carried across resumes. ``distill.rounds`` becomes an upper bound.
After ``CALIBRATION_ROUNDS`` rounds the job measures its steady round time, plans the number
of rounds that fit, and fits the learning-rate schedule to them (``TrainState.total_steps``),
so the cosine reaches 0 when the time is up rather than being cut off half-way. Should
rounds slow down later, it stops early anyway rather than overrun. ``decide`` makes each of
these decisions from measured times alone (a pure function; the main job applies its plan).
"""

from __future__ import annotations

import math
import statistics
from typing import NamedTuple

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


class Plan(NamedTuple):
    """Where a budgeted run stops, and what a decision changed."""

    stop_at: int  # rounds in all (the loop's bound)
    planned: int  # 0 until the budget has decided (then equal to stop_at)
    refit: bool = False  # the learning-rate schedule must now end at stop_at
    notes: tuple[str, ...] = ()  # what to tell the user


def decide(
    plan: Plan,
    *,
    budget_s: float,
    elapsed_s: float,
    rounds_done: int,
    student_rounds_timed: int,
    round_s: float,
    reserve_s: float,
    max_rounds: int,
    evaluating: bool,
    warmup_rounds: int = 0,
    lr_warmup_rounds: int = 0,
) -> Plan:
    """The budget's decision after a student round, as a pure function of measured times.

    Once ``CALIBRATION_ROUNDS`` student rounds are timed it plans how many rounds fit
    (``plan_rounds``), and plans again at each evaluation (evaluation time is then measured);
    between plans it stops early when the next round would overrun. A plan that moves the stop
    by more than max(2, 5 %) is reported, with a warning when the learning-rate warm-up would
    take over half of the student's rounds.

    Args:
      plan: the current plan.
      rounds_done: rounds finished, this one included.
      student_rounds_timed: student rounds this process has timed (warm-up rounds excluded).
      round_s: a round's wall time (``round_seconds``), agreed across processes.
      reserve_s: the final evaluation's time.
      evaluating: this round ends with an evaluation.
    """
    if student_rounds_timed >= CALIBRATION_ROUNDS and (not plan.planned or evaluating):
        fit = plan_rounds(budget_s, elapsed_s, rounds_done, round_s, reserve_s, max_rounds)
        notes = ()
        if not plan.planned or abs(fit - plan.stop_at) > max(2, plan.stop_at // 20):
            notes = (
                f"Time budget: {round_s:.2f} s per round, so {fit} rounds fit in "
                f"{budget_s:.0f} s; the learning-rate schedule now ends there.",
            )
            if fit - warmup_rounds < 2 * lr_warmup_rounds:
                notes += (
                    f"  Warning: distill.lr_warmup_rounds={lr_warmup_rounds} is over half of "
                    "the student's rounds; lower it for this budget.",
                )
        return Plan(fit, fit, refit=True, notes=notes)
    if not next_round_fits(budget_s, elapsed_s, round_s, reserve_s):
        note = (
            f"Time budget: stopping after round {rounds_done} of {plan.stop_at} to stay within "
            f"{budget_s:.0f} s."
        )
        return Plan(rounds_done, rounds_done, notes=(note,))
    return plan._replace(refit=False, notes=())
