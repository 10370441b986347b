"""Health of a synthesizer on a converted teacher, without training a student.

Runs ``synth.<method>.warmup_rounds`` warm-up rounds and ``--rounds`` more (adversarial and
STARS terms on, against a freshly initialised, frozen spiking student: no KD) exactly as the
main job's round loop does, then prints and writes what ``stars_jax.diagnostics`` measures on
the kept batches (teacher top-1 against their labels, class entropy, diversity of the teacher's
features), the bank's class entropy, and the same figures for a real test batch of the same
size, with the wall time. Used for the CPU table in benchmarks/RESULTS.md:

  python benchmarks/synth_health.py --config configs/cifar10.py:nayer,wrn40_2 \
      --config.teacher.dir=teachers/cifar10_wrn40_2 --config.synth.batch_size=64 \
      --rounds 10 --out health.json --grid health.png
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stars_jax import data as data_lib  # noqa: E402
from stars_jax import diagnostics, metrics  # noqa: E402
from stars_jax.bank import init_bank  # noqa: E402
from stars_jax.config import synth_view  # noqa: E402
from stars_jax.distill import (  # noqa: E402
    KDContext,
    compute_dtype,
    init_train_state,
    lif_params,
    make_optimizer,
    make_round_steps,
    run_round,
)
from stars_jax.model_dir import build_model, load_model_dir  # noqa: E402
from stars_jax.models.students import make_student  # noqa: E402
from stars_jax.synthesis import make_synthesizer  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (ml_collections).", lock_config=True)
flags.DEFINE_integer("rounds", 10, "Rounds after the warm-up.")
flags.DEFINE_string("out", "", "Write the per-round figures and the summary here (JSON).")
flags.DEFINE_string("grid", "", "Write the last kept batch here (PNG, labelled).")
flags.mark_flags_as_required(["config"])

KEYS = ("synth/teacher_acc", "synth/class_entropy", "synth/diversity", "synth/bank_entropy")


def run(config, rounds: int, grid: str = "") -> dict:
    sc = synth_view(config.synth)  # the shared keys and those of synth.method
    teacher = load_model_dir(config.teacher.dir)
    meta = teacher.meta
    mean, std = tuple(meta["normalization"]["mean"]), tuple(meta["normalization"]["std"])
    shape, k = tuple(meta["input_shape"]), meta["num_classes"]
    t_model = build_model(meta, compute_dtype(config.teacher.dtype))
    test = data_lib.load_split(config.data, config.data.test_split)
    real = diagnostics.real_batch_health(
        t_model, teacher.variables, test, sc.batch_size, mean, std, k, seed=config.seed
    )
    student = make_student(
        config.student.arch,
        k,
        config.student.time_steps,
        lif_params(config.neuron),
        compute_dtype(config.student.dtype),
    )
    opt = make_optimizer(config.distill)
    root = jax.random.key(config.seed)
    state = init_train_state(student, opt, jax.random.fold_in(root, 0), shape)
    syn = make_synthesizer(sc, t_model, student, shape, k, mean, std)
    ctx = KDContext(t_model, student, opt, mean, std, t_kd=1.0, lr=0.0, num_classes=k)
    steps = make_round_steps(syn, ctx, 8, sc)
    carry = (
        state,
        syn.init(jax.random.fold_in(root, 1), teacher.variables),
        init_bank(sc.batch_size * (sc.warmup_rounds + rounds), shape),
    )
    history, t0 = [], time.time()
    for r in range(sc.warmup_rounds + rounds):
        warm = r < sc.warmup_rounds
        t = time.time()
        carry, out = run_round(
            steps,
            carry,
            teacher.variables,
            jax.random.fold_in(root, 2 + r),
            r,
            sc.steps,
            0,
            warmup=warm,
        )
        m = {key: float(out.metrics[key]) for key in (*KEYS, "synth/bn", "synth/loss")}
        m.update(round=r + 1, warmup=warm, seconds=round(time.time() - t, 2))
        history.append(m)
        print(
            f"[{r + 1}{' warm-up' if warm else ''}] "
            + " ".join(f"{key.split('/')[1]}={m[key]:.3f}" for key in (*KEYS, "synth/bn"))
            + f" {m['seconds']:.1f}s",
            flush=True,
        )
    after = [m for m in history if not m["warmup"]] or history
    summary = {
        "method": sc.method,
        "teacher": meta["arch"],
        "batch_size": sc.batch_size,
        "steps": sc.steps,
        "warmup_rounds": sc.warmup_rounds,
        "rounds": rounds,
        "seed": config.seed,
        "teacher_acc": float(np.mean([m["synth/teacher_acc"] for m in after])),
        "class_entropy": float(np.mean([m["synth/class_entropy"] for m in after])),
        "diversity": float(np.mean([m["synth/diversity"] for m in after])),
        "bank_entropy": history[-1]["synth/bank_entropy"],
        "wall_seconds": round(time.time() - t0, 1),
        "real": real,
        "device": str(jax.devices()[0]),
    }
    if grid:
        metrics.save_image_grid(
            grid, np.asarray(out.images), np.asarray(out.labels), np.asarray(out.preds)
        )
    return {"summary": summary, "rounds": history}


def main(argv):
    del argv
    result = run(FLAGS.config, FLAGS.rounds, FLAGS.grid)
    s = result["summary"]
    print(
        f"{s['method']} on {s['teacher']} (batch {s['batch_size']}, {s['steps']} steps/round, "
        f"{s['warmup_rounds']}+{s['rounds']} rounds, {s['wall_seconds']} s): teacher top-1 "
        f"{s['teacher_acc']:.3f}, class entropy {s['class_entropy']:.3f}, diversity "
        f"{s['diversity']:.3f}, bank entropy {s['bank_entropy']:.3f} | real batch: top-1 "
        f"{s['real']['teacher_acc']:.3f}, entropy {s['real']['class_entropy']:.3f}, "
        f"diversity {s['real']['diversity']:.3f}",
        flush=True,
    )
    if FLAGS.out:
        Path(FLAGS.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    app.run(main)
