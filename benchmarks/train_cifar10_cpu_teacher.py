"""Trains the CPU CIFAR-10 teacher shipped in stars_jax/assets/teachers/cifar10_resnet14.

The recipe, as ``stars_jax.teacher.train_teacher`` runs it: CIFAR ResNet-14 (``resnet14``),
SGD + nesterov momentum 0.9, lr 0.1 cosine to 0, weight decay 5e-4, batch 128, random crop
(2-pixel zero padding) + horizontal flip, on the training split of the CIFAR-10 JPEG q75 copy
(../shared/data/cifar10-jpeg) minus its validation part (``data.val_per_class`` = 500 images a
class, ``data.val_seed`` = 0: 45,000 images left). Writes the model directory, then evaluates it
on the validation part and the test split and records recipe, seed, wall time, machine and
both top-1 figures in its model.json (``training``).

  python benchmarks/train_cifar10_cpu_teacher.py --out stars_jax/assets/teachers/cifar10_resnet14
  python benchmarks/train_cifar10_cpu_teacher.py --out /tmp/t --epochs 1 --limit 512  # smoke

Same seed and flags, same machine type: the same weights (XLA on CPU is deterministic).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stars_jax import data as data_lib  # noqa: E402
from stars_jax.accuracy import evaluate  # noqa: E402
from stars_jax.config import base_config  # noqa: E402
from stars_jax.model_dir import META_FILE, load_model_dir  # noqa: E402
from stars_jax.teacher import train_teacher  # noqa: E402

DATA = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg")
SHARED_DATA = "/work/shared/data/cifar10-jpeg"


def teacher_config(args):
    """The base config with the recipe of the module docstring."""
    c = base_config()
    c.seed = args.seed
    c.data.name, c.data.kind, c.data.path = "cifar10", "image_folder", args.data
    c.data.cache_dir = args.cache_dir
    c.data.val_per_class, c.data.val_seed = 500, 0
    c.teacher.arch = "resnet14"
    c.teacher.train_epochs = args.epochs
    c.teacher.train_batch_size = 128
    c.teacher.train_lr = 0.1
    c.teacher.train_weight_decay = 5e-4
    c.distill.crop_pad, c.distill.flip = 2, True  # What train_teacher augments with.
    return c


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        names = [ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores visible, jax {jax.__version__} on {jax.default_backend()}"
    )


def _record(out: Path, c, args, wall_s: float, results: dict, val_idx: np.ndarray) -> dict:
    """Adds the run's record to model.json (its ``training`` entry) and returns it."""
    t = c.teacher
    record = {
        "dataset": "CIFAR-10 (JPEG q75 copy), ../shared/data/cifar10-jpeg",
        "train_images": results["train_n"],
        "val_holdout": {
            "per_class": c.data.val_per_class,
            "seed": c.data.val_seed,
            "indices_sha256": hashlib.sha256(val_idx.astype(np.int64).tobytes()).hexdigest(),
            "note": "indices into the train split in load_image_folder's order, as "
            "stars_jax.data.holdout_indices draws them",
        },
        "recipe": {
            "script": "benchmarks/train_cifar10_cpu_teacher.py",
            "epochs": t.train_epochs,
            "batch_size": t.train_batch_size,
            "optimizer": "SGD nesterov momentum 0.9, cosine lr to 0",
            "lr": t.train_lr,
            "weight_decay": t.train_weight_decay,
            "augmentation": "random crop (pad 2) + horizontal flip",
            "limit": args.limit,
        },
        "seed": c.seed,
        "wall_s": round(wall_s, 1),
        "machine": _machine(),
        "val_top1": results["val_top1"],
        "test_top1": results["test_top1"],
    }
    meta = json.loads((out / META_FILE).read_text())
    meta["training"] = record
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return record


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--data", default=DATA if Path(DATA).is_dir() else SHARED_DATA)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=0, help="class-balanced train subset; 0 = all")
    p.add_argument("--cache_dir", default="", help="decoded-image cache (data.cache_dir)")
    args = p.parse_args(argv)
    c = teacher_config(args)
    test = data_lib.load_split(c.data, c.data.test_split)
    train, val, val_idx = data_lib.load_train_val(c.data)
    train = data_lib.balanced_subset(train, args.limit)
    print(f"train {len(train.labels)}, val {len(val.labels)}, test {len(test.labels)} images")
    t0 = time.time()
    out = train_teacher(c, train, test, args.out)
    wall_s = time.time() - t0
    loaded = load_model_dir(out)
    top1 = {
        name: evaluate(loaded.logits, loaded.variables, ds.images, ds.labels, 512)["top1"]
        for name, ds in (("val_top1", val), ("test_top1", test))
    }
    record = _record(Path(out), c, args, wall_s, {"train_n": len(train.labels), **top1}, val_idx)
    print(json.dumps(record, indent=2), flush=True)
    return record


if __name__ == "__main__":
    main()
