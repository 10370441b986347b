"""The main job: ``train_and_evaluate(config, workdir)``.

In three parts: ``_setup`` checks the config and builds everything the rounds read (a
``Job``: data, teacher, student, synthesizer, jitted steps) and where the run stands (a
``Progress``, restored from a checkpoint); ``_run_rounds`` runs the rounds (budget decisions
from ``budget.decide``) and returns a ``RunRecord``; ``run_summary`` turns that into
``summary.json``.

Before any work ``train_and_evaluate`` checks every config value (``validate``), locks the
workdir and compares the run fingerprint of its checkpoints (``stars_jax.workdir``).

Resume order: the newest complete checkpoint in ``workdir/checkpoints``, else scratch. The
teacher is never checkpointed (it is fixed); it comes from ``config.teacher``. Checkpoints
also hold the budget clock (wall seconds so far, planned rounds): with
``distill.time_budget_s`` the run plans its rounds and schedule to fit (``stars_jax.budget``).

Workdir contents: ``config.json`` (resolved config, versions, devices; written once the
config is valid and the checkpoint restored), ``config_history.jsonl``, ``fingerprint.json``,
``metrics.jsonl``, ``checkpoints/``, ``images/round_XXXX.png`` (synthetic images at every
evaluation), ``student/`` (a model directory for ``stars_jax.evaluate``) and
``summary.json``.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

import stars_jax
from stars_jax import budget, checkpoint, diagnostics, energy, errors, parallel, validate
from stars_jax import config as config_lib
from stars_jax import data as data_lib
from stars_jax import metrics as metrics_lib
from stars_jax import workdir as workdir_lib
from stars_jax.apply import check_dataset, logits_fn
from stars_jax.bank import Bank, init_bank
from stars_jax.distill import (
    KDContext,
    RoundSteps,
    compute_dtype,
    init_train_state,
    lif_params,
    make_optimizer,
    make_round_steps,
    run_round,
)
from stars_jax.evaluate import make_evaluator
from stars_jax.model_dir import build_model, save_model_dir
from stars_jax.models.students import make_student
from stars_jax.synthesis import make_synthesizer
from stars_jax.teacher import resolve_teacher

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
    "time/images_per_s",
)
# The kept batches' health (stars_jax.diagnostics), averaged over the run into the summary.
HEALTH_KEYS = ("synth/teacher_acc", "synth/class_entropy", "synth/diversity")


def check_finite(metrics: dict, round_: int, last_ckpt: int | None, ckpt_dir: Path) -> None:
    bad = sorted(k for k, v in metrics.items() if not np.all(np.isfinite(v)))
    if bad:
        kept = f"round {last_ckpt + 1}" if last_ckpt is not None else "none yet"
        raise FloatingPointError(
            f"Non-finite {', '.join(bad)} in round {round_ + 1}; stopped without saving. "
            f"Last good checkpoint: {kept} in {ckpt_dir}. Lower synth.<method>.lr / "
            "distill.lr or the weight of the named term, then rerun the same command to resume."
        )


def _git_commit() -> str | None:
    """The checkout's commit (with "+dirty" for local changes), None outside a git checkout."""
    import subprocess

    root = Path(stars_jax.__file__).resolve().parents[1]
    try:
        run = lambda *a: subprocess.run(
            ["git", *a], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        commit = run("rev-parse", "HEAD")
        return commit + ("+dirty" if run("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _run_info() -> dict:
    import flax
    import optax
    import orbax.checkpoint

    return {
        "stars_jax": stars_jax.__version__,
        "git_commit": _git_commit(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "orbax": orbax.checkpoint.__version__,
        "devices": [str(d) for d in jax.devices()],
        "process_count": jax.process_count(),
    }


def _place_bank(bank: Bank, mesh) -> Bank:
    sharded, rep = parallel.data_sharded(mesh), parallel.replicated(mesh)
    return Bank(
        *parallel.put((bank.images, bank.labels, bank.preds), sharded),
        *parallel.put((bank.count, bank.cursor), rep),
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
        _make_workdir(workdir)
    with workdir_lib.lock(workdir, enabled=is_main):
        workdir_lib.check_fingerprint(workdir, config, tuple(allow_config_change))
        return _train(config, workdir, t_start)


def _make_workdir(workdir) -> None:
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise errors.WorkdirError(
            f"Cannot write to --workdir {workdir}: {err.strerror or err}. Pick a directory "
            "you can write to."
        ) from None


def _train(config, workdir, t_start: float) -> dict:
    job, progress = _setup(config_lib.resolved(config), workdir)  # synth: flat, one method
    if job.is_main:
        resumed_after = progress.start if progress.start else None
        workdir_lib.record_start(workdir, config, _run_info(), resumed_after)
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
    if job.is_main and config.energy.enabled:
        summary["energy"] = _energy(job, parallel.fetch(progress.carry[0].variables))
    if job.is_main:
        student_cfg = config.student
        _save_student(
            job.workdir / "student",
            kind="student",
            arch=student_cfg.arch,
            num_classes=config.data.num_classes,
            variables=parallel.fetch(progress.carry[0].variables),
            normalization=job.norm,
            input_shape=job.image_shape,
            extra={"time_steps": student_cfg.time_steps, "lif": dataclasses.asdict(job.lif)},
        )
        metrics_lib.write_json(job.workdir / "summary.json", summary)
        print(
            f"Student top-1 {record.student['top1']:.2f}% (teacher {record.teacher_top1:.2f}%) "
            f"on {record.student['n']} real test images; {record.wall_seconds:.0f}s. "
            f"Summary: {job.workdir / 'summary.json'}",
            flush=True,
        )
    return summary


@dataclasses.dataclass(frozen=True)
class Job:
    """What the round loop reads, built once by ``_setup``."""

    config: Any
    workdir: Path
    is_main: bool
    mesh: Any
    test: data_lib.Dataset
    teacher_vars: Any
    teacher_top1: float
    teacher_eval_s: float  # the teacher's evaluation time: a first guess of the student's
    norm: tuple  # (mean, std) of the teacher's inputs
    image_shape: tuple
    lif: Any
    teacher: Any  # the teacher's Flax module
    student: Any
    steps: RoundSteps  # the jitted round steps ...
    base_steps: RoundSteps  # ... and the baseline's, used before synth.stars_start_round
    warmup_rounds: int  # synthesis-only rounds
    real_health: dict  # a real test batch's health, the reference for synth/*
    manager: Any  # the checkpoint manager
    k_loop: Any  # the rounds' random key

    def kd_horizon(self, rounds: int) -> int:
        """KD steps in ``rounds`` rounds: the schedule spans the rounds after the warm-up."""
        return max(rounds - self.warmup_rounds, 1) * self.config.distill.kd_steps


@dataclasses.dataclass
class Progress:
    """Where a run stands: its carry and its plan (restored from a checkpoint on resume)."""

    carry: tuple  # (student state, synthesizer state, bank)
    start: int  # the first round to run
    last_ckpt: int | None
    stop_at: int  # rounds in all
    planned: int  # 0 until a time budget has decided
    elapsed_before: float  # wall seconds spent by earlier processes of this run
    reported: int = 0  # the budget's stop the user was last told of


def _check_config(config, mesh) -> None:
    distill_cfg = config.distill
    for name, size in (
        ("synth.batch_size", config.synth.batch_size),
        ("distill.batch_size", distill_cfg.batch_size),
        ("distill.bank_size", distill_cfg.bank_size),
        ("data.eval_batch_size", config.data.eval_batch_size),
    ):
        parallel.check_batch(name, size, mesh)


def _kd_context(config, teacher_model, student, norm, batch_sharding) -> KDContext:
    distill_cfg = config.distill
    return KDContext(
        teacher=teacher_model,
        student=student,
        optimizer=make_optimizer(distill_cfg),
        mean=norm[0],
        std=norm[1],
        t_kd=distill_cfg.t_kd,
        per_time_step=distill_cfg.per_time_step,
        b_rca=distill_cfg.b_rca,
        rca_rep=distill_cfg.rca_rep,
        crop_pad=distill_cfg.crop_pad,
        flip=distill_cfg.flip,
        dtype=compute_dtype(config.student.dtype),
        batch_sharding=batch_sharding,
        lr=distill_cfg.lr,
        warmup_steps=distill_cfg.lr_warmup_rounds * distill_cfg.kd_steps,
        lr_min=distill_cfg.lr_min,
        num_classes=config.data.num_classes,
    )


def _fixed_images(config, teacher_meta) -> data_lib.Dataset:
    """The images KD reads when nothing is synthesised: the real training set (real_data), or
    an exported transfer set (transfer_set: ``stars_jax.export_bank``)."""
    if config.distill.mode == "real_data":
        return data_lib.load_split(config.data, config.data.train_split)
    images = data_lib.load_dataset("image_folder", config.distill.transfer_set, "train")
    try:
        check_dataset(images.images.shape, None, teacher_meta)
    except ValueError as err:
        raise errors.InputError(f"distill.transfer_set: {err}") from None
    return images


def _real_bank(train: data_lib.Dataset, mesh) -> Bank:
    """Fixed images as the bank (real_data, transfer_set), cut to a multiple of the devices."""
    keep = len(train.images) - len(train.images) % mesh.devices.size
    n = np.asarray(keep, np.int32)
    labels = train.labels[:keep]
    return Bank(train.images[:keep], labels, labels, n, np.zeros_like(n))


def _round_steps(config, ctx: KDContext, synthesizer, synthesizer_for, warmup_rounds: int):
    """The jitted round steps, and the baseline's for the rounds before
    ``synth.stars_start_round`` (the same steps when STARS starts right after the warm-up)."""
    distill_cfg = config.distill
    steps = make_round_steps(synthesizer, ctx, distill_cfg.batch_size, config.synth)
    stars_on = config.synth.l_rca or config.synth.l_tar or distill_cfg.b_rca
    if not (stars_on and config.synth.stars_start_round > warmup_rounds):
        return steps, steps
    base_synth = None
    if synthesizer is not None:
        cfg = config.synth.copy_and_resolve_references()
        cfg.l_rca = cfg.l_tar = 0.0
        base_synth = synthesizer_for(cfg)
    return steps, make_round_steps(
        base_synth, dataclasses.replace(ctx, b_rca=0.0), distill_cfg.batch_size
    )


def _teacher(config, test, mesh):
    """The teacher (model directory, Flax module on device) and its test accuracy and time."""
    load_train = lambda: (data_lib.load_split(config.data, config.data.train_split), test)
    teacher = resolve_teacher(config, load_train)
    check_dataset(test.images.shape, None, teacher.meta)
    norm = tuple(teacher.meta["normalization"]["mean"]), tuple(teacher.meta["normalization"]["std"])
    teacher_vars = parallel.put(teacher.variables, parallel.replicated(mesh))
    model = build_model(teacher.meta, compute_dtype(config.teacher.dtype))
    t_eval = time.time()
    top1 = make_evaluator(logits_fn(model, "teacher", *norm), mesh)(
        teacher_vars, test.images, test.labels, config.data.eval_batch_size
    )["top1"]
    print(
        f"Teacher {config.teacher.arch}: top-1 {top1:.2f}% on {len(test.images)} real test images",
        flush=True,
    )
    return teacher, model, teacher_vars, norm, top1, time.time() - t_eval


def _setup(config, workdir: Path) -> tuple[Job, Progress]:
    """Checks the config, loads the data and the teacher, builds the student, the synthesizer
    and the jitted steps, and restores the newest checkpoint if there is one."""
    is_main = jax.process_index() == 0
    distill_cfg, student_cfg = config.distill, config.student
    mesh = parallel.make_mesh(config.mesh.data)
    _check_config(config, mesh)
    rep, batch_sh = parallel.replicated(mesh), parallel.data_sharded(mesh)
    test = data_lib.load_split(config.data, config.data.test_split, config.data.eval_limit or None)
    teacher, teacher_model, teacher_vars, norm, teacher_top1, teacher_eval_s = _teacher(
        config, test, mesh
    )
    image_shape = tuple(teacher.meta["input_shape"])
    lif = lif_params(config.neuron)
    dtype = compute_dtype(student_cfg.dtype)
    student = make_student(
        student_cfg.arch, config.data.num_classes, student_cfg.time_steps, lif, dtype
    )
    ctx = _kd_context(config, teacher_model, student, norm, batch_sh)
    root = jax.random.key(config.seed)
    k_student, k_synth, k_loop = (jax.random.fold_in(root, i) for i in range(3))
    # The schedule's horizon is set below, once the run knows where it stops.
    state = parallel.put(init_train_state(student, ctx.optimizer, k_student, image_shape), rep)
    synthesizer_for = lambda cfg: make_synthesizer(
        cfg, teacher_model, student, image_shape, config.data.num_classes, *norm, batch_sh
    )
    synthesizer, synth_state, real_health, warmup_rounds = None, {}, {}, 0
    if distill_cfg.mode == "data_free":
        synthesizer = synthesizer_for(config.synth)
        synth_state = parallel.put(synthesizer.init(k_synth, teacher_vars), rep)
        bank = init_bank(distill_cfg.bank_size, image_shape)
        warmup_rounds = config.synth.warmup_rounds
        real_health = _real_health(config, teacher_model, teacher_vars, test, norm)
    else:  # KD on real images or a transfer set: the bank holds them; nothing is synthesised.
        bank = _real_bank(_fixed_images(config, teacher.meta), mesh)
    steps, base_steps = _round_steps(config, ctx, synthesizer, synthesizer_for, warmup_rounds)
    job = Job(
        config=config,
        workdir=workdir,
        is_main=is_main,
        mesh=mesh,
        test=test,
        teacher_vars=teacher_vars,
        teacher_top1=teacher_top1,
        teacher_eval_s=teacher_eval_s,
        norm=norm,
        image_shape=image_shape,
        lif=lif,
        teacher=teacher_model,
        student=student,
        steps=steps,
        base_steps=base_steps,
        warmup_rounds=warmup_rounds,
        real_health=real_health,
        manager=checkpoint.make_manager(workdir / "checkpoints", config.ckpt.keep),
        k_loop=k_loop,
    )
    return job, _restore(job, (state, synth_state, _place_bank(bank, mesh)))


def _real_health(config, teacher_model, teacher_vars, test, norm) -> dict:
    health = diagnostics.real_batch_health(
        teacher_model,
        teacher_vars,
        test,
        config.synth.batch_size,
        *norm,
        config.data.num_classes,
        seed=config.seed,
    )
    print(
        f"Synthesis: {config.synth.method}, {config.synth.warmup_rounds} warm-up rounds; a real "
        f"test batch of {config.synth.batch_size} (the reference for synth/*): teacher top-1 "
        f"{health['teacher_acc']:.3f}, class entropy {health['class_entropy']:.3f}, diversity "
        f"{health['diversity']:.3f}",
        flush=True,
    )
    return health


def _restore(job: Job, carry) -> Progress:
    """The newest complete checkpoint's carry and budget clock (wall seconds spent so far and
    the rounds planned; 0: not decided yet, i.e. distill.rounds), else a fresh start."""
    distill_cfg, rep = job.config.distill, parallel.replicated(job.mesh)
    clock = parallel.put({"elapsed_s": np.float32(0), "rounds": np.int32(0)}, rep)
    start, last_ckpt = 0, None
    try:
        restored = checkpoint.restore_latest(job.manager, {"carry": carry, "clock": clock})
    except Exception as err:  # orbax raises many types for a tree or shape that differs
        raise errors.InputError(
            f"Cannot restore the checkpoints in {job.manager.directory}: their structure or "
            f"shapes differ from what this config builds ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). Start a new run in another "
            "--workdir, or rerun with the config that made them."
        ) from err
    if restored is not None:
        last_ckpt, tree = restored
        carry, clock, start = tree["carry"], tree["clock"], last_ckpt + 1
        print(
            f"Resuming from the checkpoint after round {start} of {distill_cfg.rounds}.", flush=True
        )
    planned = int(parallel.fetch(clock["rounds"]))
    stop_at = planned or distill_cfg.rounds
    carry = _set_horizon(carry, job.kd_horizon(stop_at), rep)  # also on resume
    elapsed_before = float(parallel.fetch(clock["elapsed_s"]))
    return Progress(carry, start, last_ckpt, stop_at, planned, elapsed_before, planned)


def _run_rounds(job: Job, p: Progress, writer: metrics_lib.Writer, elapsed) -> RunRecord:
    """The rounds from ``p.start`` to the plan's end: each round, then its budget decision,
    evaluation, image grid, log line and checkpoint. ``p`` is updated in place."""
    distill_cfg = job.config.distill
    _announce(job, p)
    evaluate_student = _student_evaluator(job, p)
    # The student's evaluation time is guessed from the teacher's until one is timed.
    tracker = budget.Tracker(job.teacher_eval_s * job.config.student.time_steps, parallel.agree)
    result, health = {}, []
    r = p.start
    try:
        while r < p.stop_at:
            warm = r < job.warmup_rounds
            m, out = _round(job, p, r, tracker)
            if not warm and out.images is not None:
                health.append({k: float(m[k]) for k in (*HEALTH_KEYS, "synth/bank_entropy")})
            # Warm-up rounds (synthesis only) are not planned for: the budget plans from the
            # student rounds after them.
            evaluate = (r + 1) % distill_cfg.eval_every == 0 and not warm
            if distill_cfg.time_budget_s and r + 1 < p.stop_at and not warm:
                saves = (r + 1) % job.config.ckpt.every == 0
                timings = tracker.timings()
                pending_s = timings.eval_s * evaluate + timings.save_s * saves
                _apply_budget(job, p, writer, r, timings, elapsed() + pending_s)
            last = r == p.stop_at - 1
            if evaluate or last:
                result = _timed(tracker.evaluated, evaluate_student)
                writer.histogram(r, "eval/firing_rates", list(result["firing_rates"].values()))
                m.update({"eval/student_top1": result["top1"], "time/eval_s": tracker.eval_s})
                m["eval/rate_mean"] = result["rate_mean"]
            if out.images is not None and (evaluate or last or r + 1 == job.warmup_rounds):
                _save_grid(job, out, r, writer)
            if (r + 1) % job.config.log.every == 0 or last:
                writer.write(r, m, CONSOLE_KEYS)
            if (r + 1) % job.config.ckpt.every == 0 or last:
                _timed(tracker.saved, _save_checkpoint, job, p, r, elapsed())
            r += 1
    except KeyboardInterrupt:
        raise errors.Interrupted(_interrupted_message(job, p, r)) from None
    if not result:  # Resumed after the last round: evaluate the restored student.
        result = evaluate_student()
    return RunRecord(
        teacher_top1=job.teacher_top1,
        student=result,
        rounds=r,
        warmup_rounds=job.warmup_rounds,
        time_budget_s=float(distill_cfg.time_budget_s),
        wall_seconds=round(elapsed(), 1),
        time_breakdown={k: round(v, 2) for k, v in tracker.spent.items()},
        synthesis=_health_summary(health, job.real_health, job.warmup_rounds)
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


def _student_evaluator(job: Job, p: Progress):
    """A function of no arguments: the current student's test accuracy and firing rates."""
    accuracy = make_evaluator(logits_fn(job.student, "student", *job.norm), job.mesh)
    rates_fn = jax.jit(
        logits_fn(job.student, "student", *job.norm, with_rates=True),
        out_shardings=parallel.replicated(job.mesh),
    )
    batch_size = job.config.data.eval_batch_size
    return lambda: _evaluate_student(
        accuracy, rates_fn, p.carry[0].variables, job.test, batch_size, job.mesh
    )


def _round(job: Job, p: Progress, r: int, tracker: budget.Tracker):
    """Runs round ``r`` (``p.carry`` advances); returns its fetched metrics and outputs."""
    config, warm = job.config, r < job.warmup_rounds
    steps = job.steps if r >= config.synth.stars_start_round else job.base_steps
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
    )
    m = parallel.fetch(out.metrics)
    seconds = time.time() - t0
    tracker.round_done(seconds, (id(steps), warm), out.synth_seconds, plan=not warm)
    check_finite(m, r, p.last_ckpt, job.manager.directory)
    images = config.synth.batch_size * (out.images is not None)
    images += config.distill.batch_size * (0 if warm else config.distill.kd_steps)
    m.update({"time/synth_s": out.synth_seconds, "time/round_s": seconds})
    m["time/images_per_s"] = images / max(seconds, 1e-9)
    return m, out


def _timed(report, fn, *args):
    """``fn(*args)``, its wall seconds passed to ``report``."""
    t0 = time.time()
    result = fn(*args)
    report(time.time() - t0)
    return result


def _save_checkpoint(job: Job, p: Progress, r: int, elapsed_s: float) -> None:
    clock = {"elapsed_s": np.float32(elapsed_s), "rounds": np.int32(p.planned)}
    clock = parallel.put(clock, parallel.replicated(job.mesh))
    checkpoint.save(job.manager, r, {"carry": p.carry, "clock": clock})
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
        p.carry = _set_horizon(p.carry, job.kd_horizon(plan.stop_at), parallel.replicated(job.mesh))
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


def _health_summary(health: list[dict], real: dict, warmup_rounds: int) -> dict:
    """The synthetic batches' health over the student rounds, beside a real batch's."""
    out = {"warmup_rounds": warmup_rounds, "real_batch": real}
    if health:
        for key in HEALTH_KEYS:
            out[key.split("/")[1]] = float(np.mean([h[key] for h in health]))
        out["bank_entropy"] = health[-1]["synth/bank_entropy"]
    return out


def _set_horizon(carry, total_steps: int, sharding):
    state, *rest = carry
    horizon = parallel.put(np.int32(total_steps), sharding)
    return (state.replace(total_steps=horizon), *rest)


def _evaluate_student(accuracy, rates_fn, variables, test, batch_size, mesh) -> dict:
    top1 = accuracy(variables, test.images, test.labels, batch_size)["top1"]
    first = parallel.put(test.images[:batch_size], parallel.data_sharded(mesh))
    _, rates = rates_fn(variables, first)
    rates = {k: float(v) for k, v in rates.items()}
    return {
        "top1": top1,
        "n": len(test.images),
        "firing_rates": rates,
        "rate_mean": float(np.mean(list(rates.values()))),
    }


def _energy(job: Job, student_vars) -> dict:
    """The student's synaptic operations on the test set and the teacher's MACs (one batch
    suffices: they do not depend on the images), as ``energy.energy_report``."""
    batch = job.config.data.eval_batch_size
    ops = energy.model_ops(job.student, "student", student_vars, job.test.images, *job.norm, batch)
    teacher_vars = parallel.fetch(job.teacher_vars)
    first = job.test.images[:batch]
    teacher_ops = energy.model_ops(job.teacher, "teacher", teacher_vars, first, *job.norm, batch)
    cfg = job.config.energy
    report = energy.energy_report(ops, teacher_ops, cfg.pj_per_ac, cfg.pj_per_mac)
    print(energy.format_report(report), flush=True)
    return report


def _save_student(path, **kwargs) -> None:
    """A student model directory in the workdir; via a local copy for bucket workdirs."""
    if not str(path).startswith(("gs://", "s3://")):
        save_model_dir(path, **kwargs)
        return
    with tempfile.TemporaryDirectory() as tmp:
        for f in save_model_dir(tmp, **kwargs).iterdir():
            (path / f.name).parent.mkdir(parents=True, exist_ok=True)
            (path / f.name).write_bytes(f.read_bytes())


class RunRecord(NamedTuple):
    """What a finished run measured; ``run_summary`` turns it into ``summary.json``."""

    teacher_top1: float
    student: dict  # _evaluate_student's result on the real test split
    rounds: int  # rounds run in all, warm-up included
    warmup_rounds: int  # synthesis-only rounds (no KD step)
    time_budget_s: float
    wall_seconds: float
    synthesis: dict | None  # the synthetic data's health (data-free runs)
    time_breakdown: dict | None = None  # seconds in synthesis, KD, evaluation, checkpoints


def run_summary(config, record: RunRecord) -> dict:
    """``summary.json``: the config's identity, the teacher's and the student's accuracy, the
    rounds and KD steps run, the wall time and, for data-free runs, the synthetic data's health."""
    student = record.student
    summary = {
        "dataset": config.data.name,
        "teacher": {"arch": config.teacher.arch, "top1": record.teacher_top1},
        "student": {
            "arch": config.student.arch,
            "time_steps": config.student.time_steps,
            "top1": student["top1"],
            "n": student["n"],
            "firing_rates": student["firing_rates"],
            "rate_mean": student["rate_mean"],
        },
        "mode": config.distill.mode,
        "method": config.synth.method,
        "stars": bool(config.synth.l_rca or config.synth.l_tar or config.distill.b_rca),
        "seed": config.seed,
        "rounds": record.rounds,
        "kd_steps": max(record.rounds - record.warmup_rounds, 0) * config.distill.kd_steps,
        "time_budget_s": record.time_budget_s,
        "wall_seconds": record.wall_seconds,
        "time_breakdown": record.time_breakdown,
        "devices": jax.device_count(),
    }
    if record.synthesis is not None:
        summary["synthesis"] = record.synthesis
    return summary
