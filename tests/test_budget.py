"""The learning-rate schedule with a data horizon, and wall-time budgets of the main job."""

import json

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


def test_plan_rounds_closed_forms():
    # 100 s, 10 spent, 6 reserved: 84 s left for 2-second rounds -> 42 more after the 3 done.
    assert budget.plan_rounds(100, 10, 3, 2.0, 6, 1000) == 45
    assert budget.plan_rounds(100, 10, 3, 2.0, 6, 20) == 20  # capped by distill.rounds
    assert budget.plan_rounds(100, 99, 3, 2.0, 6, 1000) == 3  # nothing more fits
    assert budget.plan_rounds(100, 10, 3, 2.0, 5, 1000) == 45  # floor(85 / 2) = 42
    assert budget.next_round_fits(100, 90, 4.0, 6.0) and not budget.next_round_fits(100, 90.5, 4, 6)
    assert budget.round_seconds([30.0, 2.0, 4.0]) == 3.0  # the compiling first round is left out
    assert budget.round_seconds([30.0]) == 0.0  # unknown yet: one more round finds out


# budget.decide, table-driven: (plan before, measurements, plan after, words in the notes).
# Every row: a 100 s budget, at most 1000 rounds, 3 rounds done, rounds of 2 s, 6 s reserved.
_DECISIONS = [
    # Calibrating (2 student rounds timed), time enough: nothing changes.
    ((50, 0), dict(timed=2, elapsed=10), (50, 0, False), ()),
    # Calibrating, but the next round would overrun: stop now.
    ((50, 0), dict(timed=2, elapsed=93), (3, 3, False), ("stopping after round 3 of 50",)),
    # Calibrated and not planned yet: 84 s left, 42 more rounds, the schedule refitted.
    ((50, 0), dict(timed=3, elapsed=10), (45, 45, True), ("45 rounds fit in 100 s",)),
    # Planned, no evaluation this round, time enough: nothing changes.
    ((45, 45), dict(timed=9, elapsed=10), (45, 45, False), ()),
    # Planned, an evaluation: plan again; a move of 1 round is applied but not reported.
    ((44, 44), dict(timed=9, elapsed=10, evaluating=True), (45, 45, True), ()),
    # ... a move of 15 rounds is reported.
    ((60, 60), dict(timed=9, elapsed=10, evaluating=True), (45, 45, True), ("45 rounds fit",)),
    # Planned, the next round would overrun: stop early.
    ((45, 45), dict(timed=9, elapsed=93), (3, 3, False), ("stopping after round 3 of 45",)),
    # A plan that leaves the learning-rate warm-up over half of the student rounds warns.
    ((50, 0), dict(timed=3, elapsed=80, lr_warmup=5), (10, 10, True), ("Warning", "lower it")),
]


@pytest.mark.parametrize("before,seen,after,words", _DECISIONS)
def test_budget_decisions(before, seen, after, words):
    plan = budget.decide(
        budget.Plan(*before),
        budget_s=100.0,
        elapsed_s=seen["elapsed"],
        rounds_done=3,
        student_rounds_timed=seen["timed"],
        round_s=2.0,
        reserve_s=6.0,
        max_rounds=1000,
        evaluating=seen.get("evaluating", False),
        warmup_rounds=1,
        lr_warmup_rounds=seen.get("lr_warmup", 0),
    )
    assert (plan.stop_at, plan.planned, plan.refit) == after
    text = " ".join(plan.notes)
    assert all(w in text for w in words) and bool(text) == bool(words), text


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_data(tmp_path_factory.mktemp("budgetdata"))


def test_time_budget_stops_the_job_and_ends_the_schedule(tiny_data, tmp_path):
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
    summary = train.train_and_evaluate(c, str(tmp_path / "run"))
    rounds = summary["rounds"]
    assert budget.CALIBRATION_ROUNDS < rounds < 10_000, summary
    warmup = c.synth.warmup_rounds  # synthesis only: no KD step, no learning rate
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
