"""A run's set-up: everything ``stars_jax.train``'s round loop reads, built once.

``setup(config, workdir)`` checks the batch sizes against the mesh, loads the test split and
the teacher (scoring it), builds the student, the synthesizer (data-free) or the fixed bank
(real data, a transfer set), the KD context and the jitted round steps (a ``Job``), and
restores where the run stands from the newest checkpoint (a ``Progress``). The teacher is
never checkpointed (it is fixed); it comes from ``config.teacher``.
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

import stars_jax
from stars_jax import calibration, checkpoint, diagnostics, errors, parallel, student_tar
from stars_jax import data as data_lib
from stars_jax.accuracy import make_evaluator
from stars_jax.apply import check_dataset, logits_fn
from stars_jax.bank import Bank, init_bank
from stars_jax.config import stars_terms_on
from stars_jax.data_checks import teacher_accuracy_warning
from stars_jax.distill import (
    Carry,
    KDContext,
    RoundSteps,
    compute_dtype,
    init_train_state,
    lif_params,
    make_optimizer,
    make_round_steps,
)
from stars_jax.model_dir import build_model
from stars_jax.models.students import make_student
from stars_jax.synthesis import make_synthesizer
from stars_jax.teacher import resolve_teacher

# What KD reads: synthetic images (data_free), the real training set, or an exported
# transfer set (stars_jax.export_bank).
KD_MODES = ("data_free", "real_data", "transfer_set", "noise")


@dataclasses.dataclass(frozen=True)
class Job:
    """What the round loop reads, built once by ``setup``."""

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
    # Round steps for another synth config (data-free runs; ratio weights rebuild them with
    # the calibrated weights), None otherwise; and the KD context they share.
    steps_for: Any
    kd_context: KDContext
    # The steps from synth.tar_stop_round on (STARS without TAR); None without a stop.
    tar_off_steps: RoundSteps | None
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

    carry: Carry
    start: int  # the first round to run
    last_ckpt: int | None
    stop_at: int  # rounds in all
    planned: int  # 0 until a time budget has decided
    elapsed_before: float  # wall seconds spent by earlier processes of this run
    reported: int = 0  # the budget's stop the user was last told of


def make_workdir(workdir) -> None:
    """Creates ``workdir`` and checks that it can be written to."""
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


def _git_commit() -> str | None:
    """The checkout's commit (with "+dirty" for local changes), None outside a git checkout."""
    root = Path(stars_jax.__file__).resolve().parents[1]
    try:
        run = lambda *a: subprocess.run(
            ["git", *a], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        commit = run("rev-parse", "HEAD")
        return commit + ("+dirty" if run("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return None


def run_info() -> dict:
    """The versions and devices a run records in ``config.json``."""
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


def setup(config, workdir: Path) -> tuple[Job, Progress]:
    """Checks the config, loads the data and the teacher, builds the student, the synthesizer
    and the jitted steps, and restores the newest checkpoint if there is one."""
    mesh = parallel.make_mesh(config.mesh.data)
    _check_batches(config, mesh)
    rep, batch_sh = parallel.replicated(mesh), parallel.data_sharded(mesh)
    test = data_lib.load_split(config.data, config.data.test_split, config.data.eval_limit or None)
    teacher, teacher_model, teacher_vars, norm, teacher_top1, teacher_eval_s = _teacher(
        config, test, mesh
    )
    image_shape = tuple(teacher.meta["input_shape"])
    lif = lif_params(config.neuron)
    student = _student(config, lif)
    ctx = _kd_context(config, teacher_model, student, norm, batch_sh)
    root = jax.random.key(config.seed)
    k_student, k_synth, k_loop = (jax.random.fold_in(root, i) for i in range(3))
    # The schedule's horizon is set by ``restore``, once the run knows where it stops.
    fresh = init_train_state(
        student, ctx.optimizer, k_student, image_shape, ema=bool(config.distill.ema_decay)
    )
    state = parallel.put(fresh, rep)
    _check_student_tar(config, teacher_model, teacher_vars, student, fresh, image_shape)
    synthesizer_for = lambda cfg: make_synthesizer(
        cfg, teacher_model, student, image_shape, config.data.num_classes, *norm, batch_sh
    )
    synthesizer, synth_state, real_health, warmup_rounds = None, {}, {}, 0
    if config.distill.mode == "data_free":
        synthesizer = synthesizer_for(config.synth)
        synth_state = parallel.put(synthesizer.init(k_synth, teacher_vars), rep)
        bank = init_bank(config.distill.bank_size, image_shape)
        warmup_rounds = config.synth.warmup_rounds
        real_health = _real_health(config, teacher_model, teacher_vars, test, norm)
    else:  # KD on real images or a transfer set: the bank holds them; nothing is synthesised.
        bank = _real_bank(_fixed_images(config, teacher.meta), mesh)
    steps, base_steps = _round_steps(config, ctx, synthesizer, synthesizer_for, warmup_rounds)
    steps_for, tar_off_steps = _variant_steps(config, ctx, synthesizer_for, warmup_rounds)
    job = Job(
        config=config,
        workdir=workdir,
        is_main=jax.process_index() == 0,
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
        steps_for=steps_for,
        kd_context=ctx,
        tar_off_steps=tar_off_steps,
        warmup_rounds=warmup_rounds,
        real_health=real_health,
        manager=checkpoint.make_manager(workdir / "checkpoints", config.ckpt.keep),
        k_loop=k_loop,
    )
    return job, restore(job, Carry(state, synth_state, _place_bank(bank, mesh)))


def _student(config, lif):
    """The spiking student's Flax module (``config.student``)."""
    s = config.student
    dtype = compute_dtype(s.dtype)
    return make_student(s.arch, config.data.num_classes, s.time_steps, lif, dtype)


def _check_batches(config, mesh) -> None:
    for name, size in (
        ("synth.batch_size", config.synth.batch_size),
        ("distill.batch_size", config.distill.batch_size),
        ("distill.bank_size", config.distill.bank_size),
        ("data.eval_batch_size", config.data.eval_batch_size),
    ):
        parallel.check_batch(name, size, mesh)


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
    warning = teacher_accuracy_warning(top1, config.data.num_classes, len(test.labels))
    if warning:
        print(warning, flush=True)
    return teacher, model, teacher_vars, norm, top1, time.time() - t_eval


def _check_student_tar(config, teacher_model, teacher_vars, student, state, image_shape):
    """With ``distill.b_tar``, the layers it pairs (said once), or a ConfigError if none."""
    if not config.distill.b_tar:
        return
    x = jax.ShapeDtypeStruct((2, *image_shape), np.float32)
    names = student_tar.check_pairs(teacher_model, teacher_vars, student, state.variables, x)
    print(
        f"Student-side TAR (distill.b_tar={config.distill.b_tar:g}) pairs {len(names)} "
        f"layers: {', '.join(names)}",
        flush=True,
    )


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
        b_tar=distill_cfg.b_tar,
        rca_rep=distill_cfg.rca_rep,
        crop_pad=distill_cfg.crop_pad,
        flip=distill_cfg.flip,
        dtype=compute_dtype(config.student.dtype),
        batch_sharding=batch_sharding,
        lr=distill_cfg.lr,
        warmup_steps=distill_cfg.lr_warmup_rounds * distill_cfg.kd_steps,
        lr_min=distill_cfg.lr_min,
        num_classes=config.data.num_classes,
        ema_decay=distill_cfg.ema_decay,
    )


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


def _fixed_images(config, teacher_meta) -> data_lib.Dataset:
    """The images KD reads when nothing is synthesised: the real training set (real_data:
    the upper bound), Gaussian noise (noise: the floor), or an exported transfer set
    (transfer_set: ``stars_jax.export_bank``)."""
    if config.distill.mode == "real_data":
        return data_lib.load_split(config.data, config.data.train_split)
    if config.distill.mode == "noise":
        norm = teacher_meta["normalization"]
        return noise_images(
            config.distill.bank_size,
            tuple(teacher_meta["input_shape"]),
            norm["mean"],
            norm["std"],
            config.seed,
        )
    images = data_lib.load_dataset("image_folder", config.distill.transfer_set, "train")
    try:
        check_dataset(images.images.shape, None, teacher_meta)
    except ValueError as err:
        raise errors.InputError(f"distill.transfer_set: {err}") from None
    return images


def noise_images(n: int, shape: tuple, mean, std, seed: int) -> data_lib.Dataset:
    """``n`` uint8 images of Gaussian noise in the teacher's input statistics: every pixel
    ``mean + std * z`` per channel, ``z ~ N(0, 1)``, clipped to [0, 1] (so a standard normal
    once the teacher normalises it, up to the clipping). Labels are 0: KD reads the teacher's
    outputs, never a label. Seeded by ``seed`` apart from the run's other draws."""
    rng = np.random.default_rng([int(seed), 0x401CE])
    z = rng.standard_normal((n, *shape), dtype=np.float32)
    x = np.clip(np.asarray(mean, np.float32) + np.asarray(std, np.float32) * z, 0.0, 1.0)
    images = np.round(x * 255.0).astype(np.uint8)
    return data_lib.Dataset(images, np.zeros(n, np.int32), ("noise",))


def _real_bank(train: data_lib.Dataset, mesh) -> Bank:
    """Fixed images as the bank (real_data, transfer_set), cut to a multiple of the devices."""
    keep = len(train.images) - len(train.images) % mesh.devices.size
    n = np.asarray(keep, np.int32)
    labels = train.labels[:keep]
    return Bank(train.images[:keep], labels, labels, n, np.zeros_like(n))


def _place_bank(bank: Bank, mesh) -> Bank:
    sharded, rep = parallel.data_sharded(mesh), parallel.replicated(mesh)
    return Bank(
        *parallel.put((bank.images, bank.labels, bank.preds), sharded),
        *parallel.put((bank.count, bank.cursor), rep),
    )


def _variant_steps(config, ctx: KDContext, synthesizer_for, warmup_rounds: int):
    """``(steps_for, tar_off_steps)`` of a data-free run: round steps for another synth config
    (ratio weights rebuild the steps with the calibrated weights) and those from
    ``synth.tar_stop_round`` on (None without a stop); ``(None, None)`` without synthesis."""
    if config.distill.mode != "data_free":
        return None, None
    calibration.check(config.synth, warmup_rounds)
    batch = config.distill.batch_size
    steps_for = lambda cfg: make_round_steps(synthesizer_for(cfg), ctx, batch, cfg)
    tar_off = steps_for(without_tar(config.synth)) if config.synth.tar_stop_round else None
    return steps_for, tar_off


def without_tar(synth_cfg):
    """``synth_cfg`` with TAR off (``synth.tar_stop_round`` on)."""
    cfg = synth_cfg.copy_and_resolve_references()
    cfg.l_tar = 0.0
    return cfg


def _round_steps(config, ctx: KDContext, synthesizer, synthesizer_for, warmup_rounds: int):
    """The jitted round steps, and the baseline's for the rounds before
    ``synth.stars_start_round`` (the same steps when STARS starts right after the warm-up)."""
    distill_cfg = config.distill
    steps = make_round_steps(synthesizer, ctx, distill_cfg.batch_size, config.synth)
    stars_on = stars_terms_on(config)
    if not (stars_on and config.synth.stars_start_round > warmup_rounds):
        return steps, steps
    base_synth = None
    if synthesizer is not None:
        cfg = config.synth.copy_and_resolve_references()
        cfg.l_rca = cfg.l_tar = 0.0
        base_synth = synthesizer_for(cfg)
    return steps, make_round_steps(
        base_synth, dataclasses.replace(ctx, b_rca=0.0, b_tar=0.0), distill_cfg.batch_size
    )


def restore(job: Job, carry: Carry) -> Progress:
    """The newest complete checkpoint's carry and budget clock (wall seconds spent so far and
    the rounds planned; 0: not decided yet, i.e. distill.rounds), else a fresh start."""
    distill_cfg, rep = job.config.distill, parallel.replicated(job.mesh)
    clock = parallel.put({"elapsed_s": np.float32(0), "rounds": np.int32(0)}, rep)
    start, last_ckpt = 0, None
    try:
        restored = checkpoint.restore_run(job.manager, carry, clock)
    except errors.UserError:  # no step readable: restore_latest's own message
        raise
    except Exception as err:  # orbax raises many types for a tree or shape that differs
        raise errors.InputError(
            f"Cannot restore the checkpoints in {job.manager.directory}: their structure or "
            f"shapes differ from what this config builds ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). Start a new run in another "
            "--workdir, or rerun with the config that made them."
        ) from err
    if restored is not None:
        last_ckpt, carry, clock = restored
        start = last_ckpt + 1
        print(
            f"Resuming from the checkpoint after round {start} of {distill_cfg.rounds}.", flush=True
        )
    planned = int(parallel.fetch(clock["rounds"]))
    stop_at = planned or distill_cfg.rounds
    carry = set_horizon(carry, job.kd_horizon(stop_at), rep)  # also on resume
    elapsed_before = float(parallel.fetch(clock["elapsed_s"]))
    return Progress(carry, start, last_ckpt, stop_at, planned, elapsed_before, planned)


def set_horizon(carry: Carry, total_steps: int, sharding) -> Carry:
    """``carry`` with the student's learning-rate schedule spanning ``total_steps``."""
    horizon = parallel.put(np.int32(total_steps), sharding)
    return carry._replace(student=carry.student.replace(total_steps=horizon))
