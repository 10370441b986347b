r"""Top-1 / top-5 accuracy of a model directory on a labelled image set.

    python -m stars_jax.evaluate --model workdirs/teachers/wrn40_2 \
        --data_dir ../shared/data/cifar10-jpeg --split test

Progress goes to stderr; the last stdout line is one JSON object (``top1`` in percent, ``n``,
the model's arch/kind, the split and timings), so scripts can read ``tail -n 1``.

The accuracy loop is ``stars_jax.accuracy``'s, the main job's and the teacher trainer's too, so
a model directory scores here what its run reported.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence

import jax
from absl import flags

from stars_jax import cli, energy, errors
from stars_jax import data as data_lib
from stars_jax.accuracy import evaluate
from stars_jax.apply import check_dataset
from stars_jax.model_dir import load_model_dir


def _stderr_progress(t0: float) -> Callable[[int, int], None]:
    def report(done: int, n: int) -> None:
        rate = done / max(time.perf_counter() - t0, 1e-9)
        print(f"  eval {done}/{n} ({rate:.0f} img/s)", file=sys.stderr, flush=True)

    return report


PROG = "python -m stars_jax.evaluate"
USAGE = f"{PROG} --model=DIR --data_dir=PATH [--split=test] [--teacher=DIR]"


_DATA_DIR_HELP = "Dataset path: what the main job calls --config.data.path (see stars_jax.data)."
_ENERGY_HELP = (
    "Students: synaptic operations and energy on the evaluated images (--noenergy: skip)."
)


def define_flags(fv: flags.FlagValues) -> None:
    """The CLI's flags (``stars_jax.cli``)."""
    flags.DEFINE_string("model", None, "Model directory (see stars_jax.model_dir).", flag_values=fv)
    flags.DEFINE_string("data_dir", None, _DATA_DIR_HELP, flag_values=fv)
    flags.DEFINE_string("split", "test", "Dataset split.", flag_values=fv)
    flags.DEFINE_integer(
        "limit", None, "Class-balanced subset of N images.", lower_bound=1, flag_values=fv
    )
    flags.DEFINE_integer("batch_size", 500, "Images per step.", lower_bound=1, flag_values=fv)
    flags.DEFINE_enum(
        "data_kind",
        "auto",
        ["auto", *sorted(data_lib.LOADERS)],
        "Dataset format (--config.data.kind in the main job); auto detects it from the path.",
        flag_values=fv,
    )
    flags.DEFINE_bool("energy", True, _ENERGY_HELP, flag_values=fv)
    flags.DEFINE_string(
        "teacher", None, "A teacher model directory to compare energy with.", flag_values=fv
    )
    flags.DEFINE_float("pj_per_ac", energy.PJ_PER_AC, "Energy per accumulate, pJ.", flag_values=fv)
    flags.DEFINE_float(
        "pj_per_mac", energy.PJ_PER_MAC, "Energy per multiply-accumulate, pJ.", flag_values=fv
    )
    flags.DEFINE_bool("debug", False, cli.DEBUG_HELP, flag_values=fv)
    flags.mark_flags_as_required(["model", "data_dir"], flag_values=fv)


def _energy(args, loaded, images) -> dict:
    """The student's synaptic operations and energy on ``images`` (and the teacher's MACs)."""
    norm = loaded.meta["normalization"]
    mean_std = (tuple(norm["mean"]), tuple(norm["std"]))
    ops = energy.model_ops(
        loaded.model, "student", loaded.variables, images, *mean_std, args.batch_size
    )
    teacher_ops = None
    if args.teacher:
        t = load_model_dir(args.teacher)
        t_norm = t.meta["normalization"]
        t_mean_std = (tuple(t_norm["mean"]), tuple(t_norm["std"]))
        first = images[: args.batch_size]
        teacher_ops = energy.model_ops(
            t.model, "teacher", t.variables, first, *t_mean_std, args.batch_size
        )
    report = energy.energy_report(ops, teacher_ops, args.pj_per_ac, args.pj_per_mac)
    print(energy.format_report(report), file=sys.stderr, flush=True)
    return report


def main(argv: Sequence[str] | None = None) -> dict:
    """CLI entry point (``argv`` with or without the program name); prints and returns the
    result record."""
    return run(cli.parse(define_flags, argv, PROG))


def run(args: flags.FlagValues) -> dict:
    """Evaluates as the parsed flags say; prints and returns the result record."""
    t0 = time.perf_counter()
    loaded = load_model_dir(args.model)
    meta = loaded.meta
    kind = data_lib.detect_kind(args.data_dir) if args.data_kind == "auto" else args.data_kind
    print(f"loading {kind} {args.data_dir} split={args.split}", file=sys.stderr, flush=True)
    ds = data_lib.load_dataset(kind, args.data_dir, args.split, args.limit)
    try:
        check_dataset(ds.images.shape, len(ds.class_names), meta)
    except ValueError as err:  # A dataset that does not fit the model: the user's to fix.
        raise errors.InputError(str(err)) from err
    load_seconds = time.perf_counter() - t0
    print(
        f"evaluating {meta['kind']} {meta['arch']} on {len(ds.labels)} images "
        f"(loaded in {load_seconds:.1f} s)",
        file=sys.stderr,
        flush=True,
    )
    result = evaluate(
        loaded.logits,
        jax.device_put(loaded.variables),
        ds.images,
        ds.labels,
        args.batch_size,
        progress=_stderr_progress(time.perf_counter()),
    )
    if args.energy and meta["kind"] == "student":
        result["energy"] = _energy(args, loaded, ds.images)
    record = {
        **result,
        "model": str(args.model),
        "arch": meta["arch"],
        "kind": meta["kind"],
        "num_classes": meta["num_classes"],
        "data_dir": str(args.data_dir),
        "data_kind": kind,
        "split": args.split,
        "limit": args.limit,
        "load_seconds": round(load_seconds, 3),
        "device": jax.devices()[0].device_kind,
    }
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    cli.run_main(define_flags, run, USAGE)
