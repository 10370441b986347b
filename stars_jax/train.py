"""The main job: ``train_and_evaluate(config, workdir)``, the round loop.

Before any work ``train_and_evaluate`` checks every config value (``validate``), locks the
workdir and compares the run fingerprint of its checkpoints (``stars_jax.workdir``). Then
``run_setup.setup`` builds everything the rounds read (a ``Job``: data, teacher, student,
synthesizer, jitted steps) and where the run stands (a ``Progress``, restored from the newest
complete checkpoint in ``workdir/checkpoints``, else from scratch); ``_run_rounds`` runs the
rounds (budget decisions from ``budget.decide``) and returns a ``RunRecord``;
``run_summary`` turns that into ``summary.json``.

Checkpoints hold the carry (``distill.Carry``) and the budget clock (wall seconds so far,
planned rounds): with ``distill.time_budget_s`` the run plans its rounds and schedule to fit
(``stars_jax.budget``).

Workdir contents: ``config.json`` (resolved config, versions, devices; written once the
config is valid and the checkpoint restored), ``config_history.jsonl``, ``fingerprint.json``,
``metrics.jsonl``, ``checkpoints/``, ``images/round_XXXX.png`` (synthetic images at every
evaluation), ``student/`` (a model directory for ``stars_jax.evaluate``) and
``summary.json``.
"""

from __future__ import annotations

import dataclasses
import json
import time

import jax
import numpy as np

from stars_jax import (
    budget,
    calibration,
    checkpoint,
    errors,
    parallel,
    run_outputs,
    run_state,
    validate,
)
from stars_jax import config as config_lib
from stars_jax import metrics as metrics_lib
from stars_jax import workdir as workdir_lib
from stars_jax.accuracy import student_evaluator
from stars_jax.distill import run_round
from stars_jax.run_outputs import RunRecord, run_summary
from stars_jax.run_setup import (
    Job,
    Progress,
    make_workdir,
    run_info,
    set_horizon,
    setup,
    without_tar,
)

CONSOLE_KEYS = (
    "synth/bn",
    "synth/tar",
    "synth/rca",
    "synth/teacher_acc",
    "synth/class_entropy",
    "synth/diversity",
    "kd/loss",
    "kd/agreement",
    "eval/student_top1",
    "eval/ema_top1",
    "time/images_per_s",
)


def check_finite(metrics: dict, round_: int) -> None:
    bad = tuple(sorted(k for k, v in metrics.items() if not np.all(np.isfinite(v))))
    if bad:
        raise errors.DivergedError(f"Non-finite {', '.join(bad)} in round {round_ + 1}.", bad)


def after_divergence(job: Job, r: int, keys) -> str:
    """Sets aside the checkpoints that may hold the diverged weights (the round before the
    one that showed it trained them), and says how to go on: the learning rate to lower, as
    flags that work when added to the same command."""
    moved = checkpoint.set_aside(job.manager, lambda step: step >= r - 1, "diverged")
    # job.config is the resolved view: its synth.lr is synth.<method>.lr on the command line.
    kd = any(k.startswith(("kd/", "eval/")) for k in keys)
    key = "distill.lr" if kd else f"synth.{job.config.synth.method}.lr"
    lr = job.config.distill.lr if kd else job.config.synth.lr
    lower = f"--config.{key}={lr / 10:g}"
    kept = job.manager.latest_step()
    aside = (
        f" Set aside, as they may hold the diverged weights: {', '.join(moved)}." if moved else ""
    )
    if kept is None:
        return (
            f"Stopped without saving.{aside} No earlier checkpoint: rerun the same command with "
            f"a 10 times lower learning rate, {lower} (or lower the named term's weight)."
        )
    return (
        f"Stopped without saving.{aside} To resume from round {kept + 1}'s checkpoint with a "
        f"10 times lower learning rate, rerun the same command with {lower} "
        f"--allow_config_change={key} (or lower the named term's weight instead)."
    )


def train_and_evaluate(config, workdir: str, allow_config_change: tuple[str, ...] = ()) -> dict:
    """Runs data-free (or real-data) ANN-to-SNN distillation; returns the summary dict.

    Before any work: every config value is checked (``validate``), the workdir is locked for
    this job and, when it holds checkpoints, their run's config must match this one but for
    ``workdir.SAFE_KEYS`` and the keys in ``allow_config_change``."""
    t_start = time.time()
    validate.check_config(config)
    workdir = metrics_lib.Path(workdir)
    is_main = jax.process_index() == 0
    if is_main:
        make_workdir(workdir)
    with workdir_lib.lock(workdir, enabled=is_main):
        workdir_lib.check_fingerprint(workdir, config, tuple(allow_config_change))
        return _train(config, workdir, t_start)


def _train(config, workdir, t_start: float) -> dict:
    job, progress = setup(config_lib.resolved(config), workdir)  # synth: flat, one method
    if job.is_main:
        resumed_after = progress.start if progress.start else None
        workdir_lib.record_start(workdir, config, run_info(), resumed_after)
    done = workdir / "summary.json"
    if progress.start >= progress.stop_at and done.exists():  # finished: leave it as it is
        summary = json.loads(done.read_text())
        print(
            f"This run finished earlier: student top-1 {summary['student']['top1']:.2f}% on "
            f"{summary['student']['n']} real test images. Its summary is unchanged: {done}",
            flush=True,
        )
        return summary
    elapsed = lambda: parallel.agree(progress.elapsed_before + time.time() - t_start)
    writer = metrics_lib.Writer(
        workdir,
        progress.stop_at,
        start_round=progress.start,
        enabled=job.is_main,
        tensorboard=config.log.tensorboard,
    )
    record = _run_rounds(job, progress, writer, elapsed)
    summary = run_summary(config, record)
    writer.hparams(validate.flatten(config), {"student_top1": record.student["top1"]})
    writer.close()
    if job.is_main:
        run_outputs.write(job, record, summary, parallel.fetch(progress.carry.student.variables))
    return summary


def _run_rounds(job: Job, p: Progress, writer: metrics_lib.Writer, elapsed) -> RunRecord:
    """The rounds from ``p.start`` to the plan's end: each round, then its budget decision,
    evaluation, image grid, log line and checkpoint. ``p`` is updated in place."""
    distill_cfg = job.config.distill
    _announce(job, p)
    evaluate_student = _student_evaluation(job, p)
    # The student's evaluation time is guessed from the teacher's until one is timed.
    tracker = budget.Tracker(job.teacher_eval_s * job.config.student.time_steps, parallel.agree)
    state = run_state.load(job.manager.directory, p.last_ckpt)  # what earlier segments kept
    tracker.spent.update(state.spent)
    state.spent = tracker.spent  # saved with each checkpoint from now on
    result, health = {}, state.health
    job = _with_stars_weights(job, state.stars_weights)  # calibrated before a resume
    r, told = p.start, set()  # told: the one-off notes already printed
    try:
        while r < p.stop_at:
            warm = r < job.warmup_rounds
            if _calibrates(job, r, state):
                state.stars_weights = _calibrate(job, p, r)
                job = _with_stars_weights(job, state.stars_weights)
            m, out = _round(job, p, r, tracker, state.reference)
            if not warm and out.images is not None:
                health.append({k: float(m[k]) for k in run_outputs.ROUND_HEALTH_KEYS})
            # Warm-up rounds (synthesis only) are not planned for: the budget plans from the
            # student rounds after them.
            evaluate = (r + 1) % distill_cfg.eval_every == 0 and not warm
            if distill_cfg.time_budget_s and r + 1 < p.stop_at and not warm:
                saves = (r + 1) % job.config.ckpt.every == 0
                timings = tracker.timings()
                pending_s = timings.eval_s * evaluate + timings.save_s * saves
                _apply_budget(job, p, writer, r, timings, elapsed() + pending_s)
            _time_notes(job, p, r, tracker, elapsed, told)
            last = r == p.stop_at - 1
            if evaluate or last:
                result = _timed(tracker.evaluated, evaluate_student)
                writer.histogram(r, "eval/firing_rates", list(result["firing_rates"].values()))
                m.update({"eval/student_top1": result["top1"], "time/eval_s": tracker.eval_s})
                m["eval/rate_mean"] = result["rate_mean"]
                if "ema" in result:
                    m["eval/ema_top1"] = result["ema"]["top1"]
            if out.images is not None and (evaluate or last or r + 1 == job.warmup_rounds):
                _save_grid(job, out, r, writer)
            if (r + 1) % job.config.log.every == 0 or last:
                writer.write(r, m, CONSOLE_KEYS)
            if (r + 1) % job.config.ckpt.every == 0 or last:
                _timed(tracker.saved, _save_checkpoint, job, p, r, elapsed())
                if job.is_main:
                    run_state.save(job.manager.directory, state, r)
            r += 1
    except KeyboardInterrupt:
        raise errors.Interrupted(_interrupted_message(job, p, r)) from None
    if not result:  # Resumed after the last round: evaluate the restored student.
        result = evaluate_student()
    return _record(job, r, result, health, tracker, elapsed())


def _student_evaluation(job: Job, p: Progress):
    """``evaluate() -> dict``: the current student on the test split, and its weight average
    beside it (``"ema"``) when ``distill.ema_decay`` keeps one."""
    evaluator = student_evaluator(
        job.student, job.norm, job.mesh, job.test, job.config.data.eval_batch_size
    )

    def evaluate() -> dict:
        result = evaluator(p.carry.student.variables)
        if p.carry.student.ema is not None:
            ema = evaluator(p.carry.student.ema)
            result["ema"] = {k: ema[k] for k in ("top1", "n", "rate_mean")}
        return result

    return evaluate


def _calibrates(job: Job, r: int, state) -> bool:
    """Round ``r`` is where ratio weights are calibrated (not yet done in this run)."""
    synth_cfg = job.config.synth
    if job.steps_for is None or synth_cfg.stars_weights != "ratio" or state.stars_weights:
        return False
    return r == calibration.first_stars_round(synth_cfg, job.warmup_rounds)


def _calibrate(job: Job, p: Progress, r: int) -> dict:
    synth_cfg = job.config.synth
    key = jax.random.fold_in(jax.random.fold_in(job.k_loop, r), 0xCA11B)  # apart from the round's
    carry = p.carry
    weights = calibration.calibrate(
        job.kd_context, synth_cfg, job.teacher_vars, carry.student.variables, carry.bank, key
    )
    print(calibration.describe(synth_cfg, weights, r), flush=True)
    return weights


def _with_stars_weights(job: Job, weights: dict) -> Job:
    """``job`` whose STARS rounds synthesise with the calibrated raw weights."""
    if not weights:
        return job
    cfg = calibration.weighted(job.config.synth, weights)
    steps = job.steps_for(cfg)
    tar_off = job.steps_for(without_tar(cfg)) if job.tar_off_steps is not None else None
    return dataclasses.replace(job, steps=steps, tar_off_steps=tar_off)


def _time_notes(job: Job, p: Progress, r: int, tracker, elapsed, told: set) -> None:
    """One-off log lines about time after round ``r``: a warm-up known to overrun the budget,
    and, at the first clean student round, how long the rest of the run should take."""
    distill_cfg = job.config.distill
    if r < job.warmup_rounds:
        if distill_cfg.time_budget_s and "warmup" not in told:
            budget_s, last_s = float(distill_cfg.time_budget_s), tracker.last_round_s
            note = budget.warmup_note(budget_s, elapsed(), r + 1, job.warmup_rounds, last_s)
            if note:
                told.add("warmup")
                print(note, flush=True)
    elif tracker.clean and "expected" not in told and r + 1 < p.stop_at:
        told.add("expected")
        timings = tracker.timings()
        print(budget.expected_note(p.stop_at - r - 1, timings, distill_cfg.eval_every), flush=True)


def _record(job: Job, rounds: int, result: dict, health: list, tracker, wall_s: float):
    distill_cfg = job.config.distill
    return RunRecord(
        teacher_top1=job.teacher_top1,
        student=result,
        rounds=rounds,
        warmup_rounds=job.warmup_rounds,
        time_budget_s=float(distill_cfg.time_budget_s),
        wall_seconds=round(wall_s, 1),
        time_breakdown={k: round(v, 2) for k, v in tracker.spent.items()},
        synthesis=run_outputs.health_summary(health, job.real_health, job.warmup_rounds)
        if distill_cfg.mode == "data_free"
        else None,
    )


def _announce(job: Job, p: Progress) -> None:
    distill_cfg, student_cfg = job.config.distill, job.config.student
    budget_s = float(distill_cfg.time_budget_s)
    print(
        f"Distilling into spiking {student_cfg.arch} (T={student_cfg.time_steps}, "
        f"{distill_cfg.mode}) on "
        f"{jax.device_count()} device(s) in {jax.process_count()} process(es): "
        f"{p.stop_at} rounds x {distill_cfg.kd_steps} KD steps"
        + (f", within {budget_s:.0f} s of wall time." if budget_s else "."),
        flush=True,
    )


def _round(job: Job, p: Progress, r: int, tracker: budget.Tracker, reference: dict):
    """Runs round ``r`` (``p.carry`` advances); returns its fetched metrics and outputs. A
    loss that went non-finite or exploded (``run_state.check_divergence``, against
    ``reference``) stops the run before anything of this round is saved."""
    config, warm = job.config, r < job.warmup_rounds
    steps = job.steps if r >= config.synth.stars_start_round else job.base_steps
    if job.tar_off_steps is not None and r >= config.synth.tar_stop_round:
        steps = job.tar_off_steps
    t0 = time.time()
    p.carry, out = run_round(
        steps,
        p.carry,
        job.teacher_vars,
        jax.random.fold_in(job.k_loop, r),
        r,
        config.synth.steps,
        0 if warm else config.distill.kd_steps,
        warmup=warm,
        timed=True,
        ratios=_every(config.log.grad_ratio_every, r),
    )
    m = parallel.fetch(out.metrics)
    seconds = time.time() - t0
    tracker.round_done(seconds, (id(steps), warm), out.synth_seconds, plan=not warm)
    try:
        check_finite(m, r)
        if not warm:
            run_state.check_divergence(reference, m, r)
    except errors.DivergedError as err:
        raise errors.DivergedError(
            f"{err} {after_divergence(job, r, err.keys)}", err.keys
        ) from None
    images = config.synth.batch_size * (out.images is not None)
    images += config.distill.batch_size * (0 if warm else config.distill.kd_steps)
    m.update({"time/synth_s": out.synth_seconds, "time/round_s": seconds})
    m["time/images_per_s"] = images / max(seconds, 1e-9)
    return m, out


def _every(n: int, r: int) -> bool:
    """Round ``r`` is one of every ``n`` (0: none)."""
    return bool(n) and (r + 1) % n == 0


def _timed(report, fn, *args):
    """``fn(*args)``, its wall seconds passed to ``report``."""
    t0 = time.time()
    result = fn(*args)
    report(time.time() - t0)
    return result


def _save_checkpoint(job: Job, p: Progress, r: int, elapsed_s: float) -> None:
    clock = {"elapsed_s": np.float32(elapsed_s), "rounds": np.int32(p.planned)}
    clock = parallel.put(clock, parallel.replicated(job.mesh))
    checkpoint.save_run(job.manager, r, p.carry, clock)
    p.last_ckpt = r


def _interrupted_message(job: Job, p: Progress, r: int) -> str:
    kept = f"after round {p.last_ckpt + 1}" if p.last_ckpt is not None else "none yet"
    return (
        f"Interrupted in round {r + 1} of {p.stop_at}; the last checkpoint is {kept} "
        f"(in {job.manager.directory}). Rerun the same command to resume."
    )


def _apply_budget(job: Job, p: Progress, writer, r: int, timings: budget.Timings, elapsed_s):
    """Applies ``budget.decide`` after round ``r``: a new stop, the schedule refitted to it."""
    distill_cfg = job.config.distill
    plan = budget.decide(
        budget.Plan(p.stop_at, p.planned, reported=p.reported),
        budget_s=float(distill_cfg.time_budget_s),
        elapsed_s=elapsed_s,
        rounds_done=r + 1,
        timings=timings,
        eval_every=distill_cfg.eval_every,
        save_every=job.config.ckpt.every,
        max_rounds=distill_cfg.rounds,
        warmup_rounds=job.warmup_rounds,
        lr_warmup_rounds=distill_cfg.lr_warmup_rounds,
    )
    if plan.refit:
        p.carry = set_horizon(p.carry, job.kd_horizon(plan.stop_at), parallel.replicated(job.mesh))
        writer.total = plan.stop_at
    for note in plan.notes:
        print(note, flush=True)
    p.stop_at, p.planned, p.reported = plan.stop_at, plan.planned, plan.reported


def _save_grid(job: Job, out, r: int, writer: metrics_lib.Writer) -> None:
    n = job.config.log.grid_images
    tiles = parallel.fetch((out.images[:n], out.labels[:n], out.preds[:n]))
    if job.is_main:
        path = job.workdir / "images" / f"round_{r + 1:04d}.png"
        writer.image(r, "synthetic", metrics_lib.save_image_grid(path, *tiles))
