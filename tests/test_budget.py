"""The learning-rate schedule with a data horizon, and wall-time budgets of the main job."""

import json
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from stars_jax import budget, train
from stars_jax.distill import (
    TrainState,
    make_optimizer,
    scheduled_update,
    warmup_cosine,
)
from tests.test_train import _config, make_tiny_data


@pytest.mark.parametrize("warmup,total", [(1, 10), (4, 30), (5, 5)])
def test_warmup_cosine_matches_optax(warmup, total):
    ref = optax.warmup_cosine_decay_schedule(0.0, 0.3, max(warmup, 1), max(total, warmup + 1))
    steps = jnp.arange(total + 5)
    got = jax.vmap(lambda s: warmup_cosine(s, 0.3, warmup, jnp.int32(total)))(steps)
    np.testing.assert_allclose(got, jax.vmap(ref)(steps), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("floor", [0.0, 2e-4])
def test_cosine_without_warmup_to_a_floor(floor):
    """PyTorch's CosineAnnealingLR(T_max=total, eta_min=floor), which the reference Fast runs:
    the peak at step 0, the floor from step ``total`` on."""
    total, peak = 12, 0.2
    steps = jnp.arange(total + 4)
    got = jax.vmap(lambda s: warmup_cosine(s, peak, 0, jnp.int32(total), floor))(steps)
    t = np.minimum(np.arange(total + 4), total)
    want = floor + (peak - floor) * 0.5 * (1 + np.cos(np.pi * t / total))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)
    assert float(got[0]) == pytest.approx(peak) and float(got[-1]) == pytest.approx(floor)


@pytest.mark.parametrize(
    "name,wd,nesterov",
    [
        ("adam", 0.0, True),
        ("sgd", 0.0, True),
        ("adam", 1e-3, True),
        ("sgd", 5e-4, True),
        ("sgd", 1e-4, False),
    ],
)
def test_scheduled_update_equals_optax_optimizer(name, wd, nesterov):
    """Direction x scheduled lr == optax's own optimizer with the schedule inside."""
    cfg = ml_collections.ConfigDict({"optimizer": name, "weight_decay": wd, "nesterov": nesterov})
    schedule = optax.warmup_cosine_decay_schedule(0.0, 0.1, 2, 8)
    ref_opt = {
        "adam": optax.adam(schedule),
        "sgd": optax.sgd(schedule, momentum=0.9, nesterov=nesterov),
    }[name]
    if wd:
        ref_opt = optax.chain(optax.add_decayed_weights(wd), ref_opt)
    opt = make_optimizer(cfg)
    params = {"w": jnp.array([1.0, -2.0, 0.5]), "b": jnp.array(0.3)}
    grad_fn = jax.grad(lambda p: jnp.sum((p["w"] - 0.2) ** 2 * jnp.arange(1, 4)) + p["b"] ** 4)
    ref_params, ref_state = params, ref_opt.init(params)
    state = TrainState(jnp.int32(0), params, {}, opt.init(params), jnp.int32(8))
    for _ in range(6):
        updates, ref_state = ref_opt.update(grad_fn(ref_params), ref_state, ref_params)
        ref_params = optax.apply_updates(ref_params, updates)
        lr = warmup_cosine(state.step, 0.1, 2, state.total_steps)
        new_params, opt_state = scheduled_update(opt, grad_fn(state.params), state, lr)
        state = state.replace(step=state.step + 1, params=new_params, opt_state=opt_state)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), state.params, ref_params)
    assert not np.allclose(state.params["w"], params["w"])  # it did move


def test_plan_rounds_and_steady_seconds_closed_forms():
    # 100 s, 10 spent, 6 reserved: 84 s left for 2-second rounds -> 42 more after the 3 done.
    assert budget.plan_rounds(100, 10, 3, 2.0, 6, 1000) == 45
    assert budget.plan_rounds(100, 10, 3, 2.0, 6, 20) == 20  # capped by distill.rounds
    assert budget.plan_rounds(100, 99, 3, 2.0, 6, 1000) == 3  # nothing more fits
    assert budget.plan_rounds(100, 10, 3, 2.0, 5, 1000) == 45  # floor(85 / 2) = 42
    assert budget.steady_seconds([]) == 0.0  # unknown yet: one more round finds out
    assert budget.steady_seconds([2.0, 9.0, 3.0]) == 3.0  # one slow round moves the median little
    # Only the last WINDOW rounds count: a lasting slow-down takes over.
    slow = [1.0] * 20 + [4.0] * (budget.WINDOW // 2 + 1)
    assert budget.steady_seconds(slow) == 4.0


def test_tracker_leaves_out_compiling_rounds_and_times_evaluation_apart():
    t = budget.Tracker(eval_guess_s=7.0)
    assert t.timings() == budget.Timings(0.0, 7.0, 0.0)
    t.round_done(30.0, kind="stars")  # compiled the STARS steps: left out
    t.round_done(2.0, kind="stars")
    t.round_done(25.0, kind="base")  # first round of other steps: compiled, left out
    t.round_done(4.0, kind="base")
    t.evaluated(5.0)
    t.saved(1.5)
    assert t.timings() == budget.Timings(3.0, 5.0, 1.5)


# budget.decide, table-driven: (plan before, measurements, plan after, words in the notes).
# Every row: a 100 s budget, at most 1000 rounds, 3 rounds done, 6 s reserved for the final
# evaluation (5 s) and save (1 s); evaluations and saves every 1000 rounds (so their share of a
# round, 0.006 s, changes no count below) unless stated.
_DECISIONS = [
    # No clean round timed yet, time enough: nothing changes.
    ((50, 0, 0), dict(round_s=0.0, elapsed=10), (50, 0, False), ()),
    # No clean round timed yet, but even the reserve is late: stop now.
    ((50, 0, 0), dict(round_s=0.0, elapsed=95), (3, 3, True), ("stopping after round 3 of 50",)),
    # A first plan: 84 s left, 41 more 2-second rounds (+ their share), the schedule refitted.
    ((50, 0, 0), dict(elapsed=10), (44, 44, True), ("44 rounds fit in 100 s",)),
    # Planned, the same estimate: nothing changes.
    ((44, 44, 44), dict(elapsed=10), (44, 44, False), ()),
    # A move of 1 round is applied (schedule refitted) but not reported.
    ((45, 45, 45), dict(elapsed=10), (44, 44, True), ()),
    # ... a move of 16 rounds is reported, with the plan it replaces.
    ((60, 60, 60), dict(elapsed=10), (44, 44, True), ("44 rounds fit", "(was 60)")),
    # Rounds slowed to 4 s: the plan shrinks to what fits (84 / 4.006 -> 20 more).
    ((44, 44, 44), dict(elapsed=10, round_s=4.0), (23, 23, True), ("23 rounds fit",)),
    # This round's evaluation and save (6 s) are still to come: counted as spent.
    ((44, 44, 44), dict(elapsed=10, pending=6.0), (41, 41, True), ("41 rounds fit",)),
    # Evaluations every 2 rounds at 5 s: each round costs 2 + 2.5 s -> 18 more.
    ((44, 44, 44), dict(elapsed=10, eval_every=2), (21, 21, True), ("21 rounds fit",)),
    # The next round would overrun: stop early.
    ((45, 45, 45), dict(elapsed=93), (3, 3, True), ("stopping after round 3 of 45",)),
    # A plan that leaves the learning-rate warm-up over half of the student rounds warns.
    ((50, 0, 0), dict(elapsed=80, lr_warmup=5), (9, 9, True), ("Warning", "lower it")),
]


@pytest.mark.parametrize("before,seen,after,words", _DECISIONS)
def test_budget_decisions(before, seen, after, words):
    stop_at, planned, reported = before
    plan = budget.decide(
        budget.Plan(stop_at, planned, reported=reported),
        budget_s=100.0,
        elapsed_s=seen["elapsed"],
        rounds_done=3,
        timings=budget.Timings(seen.get("round_s", 2.0), 5.0, 1.0),
        eval_every=seen.get("eval_every", 1000),
        save_every=1000,
        max_rounds=1000,
        pending_s=seen.get("pending", 0.0),
        warmup_rounds=1,
        lr_warmup_rounds=seen.get("lr_warmup", 0),
    )
    assert (plan.stop_at, plan.planned, plan.refit) == after
    text = " ".join(plan.notes)
    assert all(w in text for w in words) and bool(text) == bool(words), text


def _simulate(budget_s, round_s, eval_every=10, eval_s=4.0, save_s=0.5, start_s=20.0):
    """The main job's budget bookkeeping (``train._run_rounds``) under a fake clock:
    ``round_s(r)`` is round r's time; the first round compiles (+15 s); evaluations and saves
    every ``eval_every`` rounds and at the end. Returns (stop time, rounds run, the plan the
    schedule was last fitted to, the notes)."""
    clock, tracker = start_s, budget.Tracker(eval_guess_s=1.0)
    plan, r, notes = budget.Plan(100_000, 0), 0, []
    while r < plan.stop_at:
        took = round_s(r) + (15.0 if r == 0 else 0.0)
        clock += took
        tracker.round_done(took, kind="steps")
        evaluates = (r + 1) % eval_every == 0
        if r + 1 < plan.stop_at:
            plan = budget.decide(
                plan,
                budget_s=budget_s,
                elapsed_s=clock,
                rounds_done=r + 1,
                timings=tracker.timings(),
                eval_every=eval_every,
                save_every=eval_every,
                max_rounds=100_000,
                pending_s=(eval_s + save_s) * evaluates,
            )
            notes += plan.notes
        if (r + 1) % eval_every == 0 or r + 1 == plan.stop_at:
            clock += eval_s + save_s
            tracker.evaluated(eval_s)
            tracker.saved(save_s)
        r += 1
    return clock, r, plan.planned, notes


@pytest.mark.parametrize(
    "name,round_s",
    [
        ("steady", lambda r: 1.0),
        ("slowed for a while", lambda r: 3.0 if 40 <= r < 70 else 1.0),
        ("slowed at the start", lambda r: 2.5 if r < 12 else 1.0),
        ("slowed near the end", lambda r: 2.0 if r >= 250 else 1.0),
        ("one stalled round", lambda r: 40.0 if r == 30 else 1.0),
    ],
)
def test_budget_holds_under_load(name, round_s):
    """Under a fake clock with rounds slowed by other work for a while, the run ends within
    3 % of its budget and the learning-rate schedule ends at its last round."""
    budget_s = 400.0
    stop_s, rounds, planned, notes = _simulate(budget_s, round_s)
    assert abs(stop_s - budget_s) <= 0.03 * budget_s, (name, stop_s, rounds, notes)
    assert planned == rounds, (name, planned, rounds)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_data(tmp_path_factory.mktemp("budgetdata"))


def test_expected_duration_note_closed_form():
    """Rounds left x round time + (periodic + final) evaluations, in minutes past 90 s."""
    note = budget.expected_note(100, budget.Timings(3.0, 6.0, 0.5), eval_every=10)
    assert "100 more rounds at 3.00 s" in note and "11 evaluations at 6.0 s" in note
    assert "about 6.1 min more" in note  # (300 + 66) s
    assert "about 9 s more" in budget.expected_note(2, budget.Timings(3.0, 3.0, 0.0), 10)


def test_warmup_overrunning_the_budget_is_warned_about_as_soon_as_it_is_known():
    """The warm-up, which the budget does not plan, is projected from its latest round once
    the compiling first round is over; the first round alone warns only past the budget."""
    assert budget.warmup_note(120, 30, 1, 10, 30.0) is None  # compiling round: not projected
    assert "over the time budget of 120 s" in budget.warmup_note(120, 130, 1, 10, 130.0)
    assert budget.warmup_note(120, 40, 2, 10, 10.0) is None  # 40 + 8 x 10 = 120 fits
    note = budget.warmup_note(120, 41, 2, 10, 10.0)  # 121 s: over
    assert "about 121 s" in note and "synth.warmup_rounds" in note


def test_time_budget_stops_the_job_and_ends_the_schedule(tiny_data, tmp_path, capsys):
    """With room for 10,000 rounds but a budget of 20 s more than a one-round job takes, the
    job plans, stops by itself near the budget, and its cosine schedule reaches ~0 at the last
    round it runs; a rerun resumes into the finished run instead of training on."""
    cache = tmp_path / "cache"
    one = train.train_and_evaluate(
        _config(tiny_data, cache, **{"distill.rounds": 1}), str(tmp_path / "one")
    )
    # Compilation, teacher training and evaluation set the floor; machines differ, so the
    # budget is relative to this machine's one-round job.
    budget_s = one["wall_seconds"] + 20.0
    c = _config(
        tiny_data,
        cache,
        **{
            "distill.rounds": 10_000,
            "distill.time_budget_s": budget_s,
            "distill.eval_every": 25,
            "ckpt.every": 25,
        },
    )
    capsys.readouterr()
    summary = train.train_and_evaluate(c, str(tmp_path / "run"))
    assert len(re.findall(r"Expected: \d+ more rounds", capsys.readouterr().out)) == 1
    rounds = summary["rounds"]
    assert 3 < rounds < 10_000, summary
    warmup = c.synth.fast.warmup_rounds  # synthesis only: no KD step, no learning rate
    assert summary["kd_steps"] == (rounds - warmup) * c.distill.kd_steps
    # Aimed at the budget: not far over it, and not stopped long before it.
    assert budget_s - 15 < summary["wall_seconds"] < budget_s + 10, (budget_s, summary)
    metrics = tmp_path / "run" / "metrics.jsonl"
    records = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert not any("kd/lr" in r for r in records[:warmup])
    lrs = [r["kd/lr"] for r in records[warmup:]]
    assert max(lrs) == pytest.approx(c.distill.lr, rel=0.05)  # warm-up reached the peak
    assert lrs[-1] < 0.05 * c.distill.lr  # and the cosine ran out with the time
    assert records[-1]["round"] == rounds - 1 and "eval/student_top1" in records[-1]
    again = train.train_and_evaluate(c, str(tmp_path / "run"))
    assert again["rounds"] == rounds and again["student"]["top1"] == summary["student"]["top1"]
    assert len(metrics.read_text().splitlines()) == rounds
