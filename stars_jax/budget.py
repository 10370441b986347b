"""Wall-time budgets: how many rounds fit, and when to stop.

With ``distill.time_budget_s > 0`` the main job aims to finish (final evaluation and save
included) within that many seconds of wall time, counted from the job's start (teacher
loading and compilation included) and carried across resumes. ``distill.rounds`` becomes an
upper bound.

After every student round the job plans again how many rounds fit and fits the
learning-rate schedule to them (``TrainState.total_steps``), so the cosine reaches 0 when the
time is up rather than being cut off half-way. The plan rests on three separately measured
times (``Timings``): a round's steps, an evaluation and a checkpoint save. A round's time is
the median of the last ``WINDOW`` clean rounds (no compilation, evaluation or save inside
them): one slow round, such as the first one, which compiles, or one that shared the machine
with a burst of other work, moves it little, while a lasting change of speed takes over within
half a window and the plan follows. ``decide`` is a pure function of those times; ``Tracker``
collects them in the main job (and in the tests, under a fake clock).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import NamedTuple

WINDOW = 8  # clean rounds the steady round time looks back over


def steady_seconds(clean_round_seconds: list[float], window: int = WINDOW) -> float:
    """A round's steady time: the median of the last ``window`` clean rounds; 0 while none is
    known (the job then runs one more round to find out rather than stop on a guess)."""
    recent = clean_round_seconds[-window:]
    return statistics.median(recent) if recent else 0.0


class Timings(NamedTuple):
    """Measured seconds (agreed across processes) that a plan rests on."""

    round_s: float  # one round's steps (``steady_seconds``); 0 while unknown
    eval_s: float  # one student evaluation
    save_s: float  # one checkpoint save


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


class Plan(NamedTuple):
    """Where a budgeted run stops, and what a decision changed."""

    stop_at: int  # rounds in all (the loop's bound)
    planned: int  # 0 until the budget has decided (then equal to stop_at)
    refit: bool = False  # the learning-rate schedule must now end at stop_at
    notes: tuple[str, ...] = ()  # what to tell the user
    reported: int = 0  # the stop the user was last told of


def decide(
    plan: Plan,
    *,
    budget_s: float,
    elapsed_s: float,
    rounds_done: int,
    timings: Timings,
    eval_every: int,
    save_every: int,
    max_rounds: int,
    pending_s: float = 0.0,
    warmup_rounds: int = 0,
    lr_warmup_rounds: int = 0,
) -> Plan:
    """The budget's decision after a student round, as a pure function of measured times.

    Plans how many rounds fit: each further round costs its steps plus its share of the
    periodic evaluations and saves, and the final evaluation and save are held in reserve. The
    schedule is refitted whenever the stop moves. A first plan, and a later one that moves the
    stop by more than max(2, 5 %) from the last one reported, are reported; a warning is added
    when the learning-rate warm-up would take over half of the student's rounds.

    Args:
      plan: the current plan.
      rounds_done: rounds finished, this one included.
      timings: the measured times (``round_s`` 0: not known yet, so no plan is made).
      eval_every, save_every: rounds between evaluations, and between checkpoint saves.
      pending_s: what this round still spends after the decision (its periodic evaluation
        and save), counted as spent.
    """
    t, elapsed_s = timings, elapsed_s + pending_s
    reserve_s = t.eval_s + t.save_s
    if t.round_s <= 0:  # Nothing to plan from yet; stop only if even the reserve is late.
        if elapsed_s + reserve_s < budget_s:
            return plan._replace(refit=False, notes=())
        return _stop(plan, rounds_done, budget_s)
    per_round = t.round_s + t.eval_s / eval_every + t.save_s / save_every
    fit = plan_rounds(budget_s, elapsed_s, rounds_done, per_round, reserve_s, max_rounds)
    if fit == rounds_done and plan.stop_at > rounds_done:
        return _stop(plan, rounds_done, budget_s)
    notes, reported = (), plan.reported
    if not plan.planned or abs(fit - plan.reported) > max(2, plan.reported // 20):
        was = f" (was {plan.reported})" if plan.planned else ""
        notes = (
            f"Time budget: rounds take {t.round_s:.2f} s, evaluations {t.eval_s:.1f} s, "
            f"so {fit} rounds fit in {budget_s:.0f} s{was}; the learning-rate schedule now "
            "ends there.",
        )
        reported = fit
        if fit - warmup_rounds < 2 * lr_warmup_rounds:
            notes += (
                f"  Warning: distill.lr_warmup_rounds={lr_warmup_rounds} is over half of "
                "the student's rounds; lower it for this budget.",
            )
    refit = fit != plan.stop_at or not plan.planned
    return Plan(fit, fit, refit=refit, notes=notes, reported=reported)


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def expected_note(rounds_left: int, timings: Timings, eval_every: int) -> str:
    """The log line that says how long the rest of a run is expected to take, from the first
    clean round's time (saves, which are short, are left out)."""
    t = timings
    evals = rounds_left // max(eval_every, 1) + 1  # the periodic ones and the final one
    seconds = rounds_left * t.round_s + evals * t.eval_s
    return (
        f"Expected: {rounds_left} more rounds at {t.round_s:.2f} s each and {evals} "
        f"evaluations at {t.eval_s:.1f} s, about {_duration(seconds)} more on this machine."
    )


def warmup_note(
    budget_s: float, elapsed_s: float, warm_done: int, warm_total: int, last_round_s: float
) -> str | None:
    """A warning, during the synthesis warm-up, once the warm-up alone is known to overrun the
    time budget (the budget plans only the student's rounds after it); None while it fits.
    After the first warm-up round, which compiles, only a budget already spent counts."""
    projected = elapsed_s + (warm_total - warm_done) * last_round_s * (warm_done > 1)
    if projected <= budget_s:
        return None
    return (
        f"Warning: the synthesis warm-up ({warm_total} rounds) takes about {projected:.0f} s, "
        f"over the time budget of {budget_s:.0f} s (distill.time_budget_s), so the student will "
        "get a single round after it. Raise distill.time_budget_s or lower synth.warmup_rounds."
    )


def _stop(plan: Plan, rounds_done: int, budget_s: float) -> Plan:
    note = (
        f"Time budget: stopping after round {rounds_done} of {plan.stop_at} to stay within "
        f"{budget_s:.0f} s."
    )
    return Plan(rounds_done, rounds_done, refit=True, notes=(note,), reported=rounds_done)


class Tracker:
    """Collects a job's measured times for ``decide``. ``agree`` makes a measured value the
    same on every process (the main job passes ``parallel.agree``), since every process must
    take the same decision."""

    def __init__(self, eval_guess_s: float, agree: Callable[[float], float] = float):
        self.agree = agree
        self.clean: list[float] = []
        self.eval_s = agree(eval_guess_s)  # a guess until an evaluation is timed
        self.save_s = 0.0
        self.last_round_s = 0.0  # the latest round's steps, compiling or not
        self._seen: set = set()
        # Seconds spent in each part of the job by this process (the summary's breakdown).
        self.spent = {"synthesis_s": 0.0, "kd_s": 0.0, "evaluation_s": 0.0, "checkpoint_s": 0.0}

    def round_done(self, seconds: float, kind, synth_seconds: float = 0.0, plan=True) -> None:
        """A round's steps took ``seconds`` (``synth_seconds`` of them synthesising). The first
        round of each ``kind`` (which jitted steps it ran) compiled them, and rounds with
        ``plan`` False (the warm-up, which the budget does not plan for) are left out of the
        round time."""
        if plan and kind in self._seen:
            self.clean.append(seconds)
        self.last_round_s = seconds
        self._seen.add(kind)
        self.spent["synthesis_s"] += synth_seconds
        self.spent["kd_s"] += seconds - synth_seconds

    def evaluated(self, seconds: float) -> None:
        self.eval_s = self.agree(seconds)
        self.spent["evaluation_s"] += seconds

    def saved(self, seconds: float) -> None:
        self.save_s = self.agree(seconds)
        self.spent["checkpoint_s"] += seconds

    def timings(self) -> Timings:
        return Timings(self.agree(steady_seconds(self.clean)), self.eval_s, self.save_s)
