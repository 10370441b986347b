"""What a finished run leaves: ``summary.json`` (``run_summary`` of a ``RunRecord``), the
student's model directory (``student/``) and, with ``energy.enabled``, its energy report."""

from __future__ import annotations

import dataclasses
import tempfile
from typing import NamedTuple

import jax
import numpy as np

from stars_jax import energy, parallel
from stars_jax import metrics as metrics_lib
from stars_jax.config import stars_terms_on
from stars_jax.model_dir import save_model_dir
from stars_jax.paths import is_remote

# The kept batches' health (stars_jax.diagnostics), averaged over the run into the summary.
HEALTH_KEYS = ("synth/teacher_acc", "synth/class_entropy", "synth/diversity")
ROUND_HEALTH_KEYS = (*HEALTH_KEYS, "synth/bank_entropy")  # what the loop keeps of each round


def write(job, record, summary: dict, student_vars) -> None:
    """The energy report (into ``summary``), the student's model directory and
    ``summary.json`` in the job's workdir, and the run's closing line."""
    config = job.config
    if config.energy.enabled:
        summary["energy"] = _energy(job, student_vars)
    _save_student(
        job.workdir / "student",
        kind="student",
        arch=config.student.arch,
        num_classes=config.data.num_classes,
        variables=student_vars,
        normalization=job.norm,
        input_shape=job.image_shape,
        extra={"time_steps": config.student.time_steps, "lif": dataclasses.asdict(job.lif)},
    )
    metrics_lib.write_json(job.workdir / "summary.json", summary)
    print(
        f"Student top-1 {record.student['top1']:.2f}% (teacher {record.teacher_top1:.2f}%) "
        f"on {record.student['n']} real test images; {record.wall_seconds:.0f}s. "
        f"Summary: {job.workdir / 'summary.json'}",
        flush=True,
    )


def health_summary(health: list[dict], real: dict, warmup_rounds: int) -> dict:
    """The synthetic batches' health over the student rounds, beside a real batch's."""
    out = {"warmup_rounds": warmup_rounds, "real_batch": real}
    if health:
        for key in HEALTH_KEYS:
            out[key.split("/")[1]] = float(np.mean([h[key] for h in health]))
        out["bank_entropy"] = health[-1]["synth/bank_entropy"]
    return out


def _energy(job, student_vars) -> dict:
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
    if not is_remote(path):
        save_model_dir(path, **kwargs)
        return
    with tempfile.TemporaryDirectory() as tmp:
        for f in save_model_dir(tmp, **kwargs).iterdir():
            (path / f.name).parent.mkdir(parents=True, exist_ok=True)
            (path / f.name).write_bytes(f.read_bytes())


class RunRecord(NamedTuple):
    """What a finished run measured; ``run_summary`` turns it into ``summary.json``."""

    teacher_top1: float
    student: dict  # accuracy.student_evaluator's result on the real test split
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
        "stars": bool(stars_terms_on(config)),
        "seed": config.seed,
        "rounds": record.rounds,
        "kd_steps": max(record.rounds - record.warmup_rounds, 0) * config.distill.kd_steps,
        "time_budget_s": record.time_budget_s,
        "wall_seconds": record.wall_seconds,
        "time_breakdown": record.time_breakdown,
        "devices": jax.device_count(),
    }
    if "ema" in student:  # distill.ema_decay > 0: the weight average, evaluated alike
        summary["student_ema"] = {"decay": config.distill.ema_decay, **student["ema"]}
    if record.synthesis is not None:
        summary["synthesis"] = record.synthesis
    return summary
