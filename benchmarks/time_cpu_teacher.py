"""Times a teacher's forward on one batch against one KD step of a spiking student (CPU).

The issue-23 budget: the CPU CIFAR-10 teacher's forward (which every synthesis and KD step
runs) may cost at most a third of the student's KD step. The KD step is ``distill.kd_step``
as ``benchmarks/bench_steps.py`` times it (teacher forward, spiking student forward and BPTT,
SGD update); the forward is the teacher's inference apply on the same normalised batch.
Weights are random: the time does not depend on them.

  python benchmarks/time_cpu_teacher.py --teacher resnet14 --student resnet18 --T 2 --batch 128
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stars_jax.apply import NORMALIZATION, normalize  # noqa: E402
from stars_jax.config import base_config  # noqa: E402
from stars_jax.distill import KDContext, init_train_state, kd_step, make_optimizer  # noqa: E402
from stars_jax.models.students import make_student  # noqa: E402
from stars_jax.models.teachers import make_teacher  # noqa: E402

MEAN, STD = NORMALIZATION["cifar10"]


def _median_s(fn, carry, steps: int) -> tuple[float, float]:
    """(first call incl. compile, median of ``steps`` later calls) in seconds."""
    t0 = time.perf_counter()
    carry = jax.block_until_ready(fn(carry))
    first, times = time.perf_counter() - t0, []
    for _ in range(steps):
        t0 = time.perf_counter()
        carry = jax.block_until_ready(fn(carry))
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", default="resnet14")
    p.add_argument("--student", default="resnet18")
    p.add_argument("--T", type=int, default=2)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args(argv)
    shape = (32, 32, 3)
    teacher = make_teacher(args.teacher, 10)
    student = make_student(args.student, 10, time_steps=args.T)
    tv = teacher.init(jax.random.key(0), jnp.zeros((2, *shape)))
    cfg = base_config().distill
    cfg.optimizer, cfg.nesterov = "sgd", True
    opt = make_optimizer(cfg)
    state = init_train_state(student, opt, jax.random.key(1), shape, 1000)
    ctx = KDContext(teacher, student, opt, MEAN, STD, lr=0.1, crop_pad=2, flip=True)
    images = jax.random.randint(jax.random.key(3), (args.batch, *shape), 0, 256).astype(jnp.uint8)
    key = jax.random.key(4)
    kd = jax.jit(lambda s: kd_step(ctx, s, tv, images, key)[0], donate_argnums=0)
    x = normalize(images, MEAN, STD)
    fwd = jax.jit(lambda x: teacher.apply(tv, x)[0] * 1.0)  # [B, K] logits, fed back as carry
    fwd_first, fwd_s = _median_s(lambda _: fwd(x), x, args.steps)
    kd_first, kd_s = _median_s(kd, state, args.steps)
    row = {
        **vars(args),
        "device": jax.devices()[0].device_kind,
        "teacher_forward_s": round(fwd_s, 4),
        "kd_step_s": round(kd_s, 4),
        "forward_over_kd": round(fwd_s / kd_s, 4),
        "compile_s": {"forward": round(fwd_first, 1), "kd": round(kd_first, 1)},
    }
    print(json.dumps(row), flush=True)
    return row


if __name__ == "__main__":
    main()
