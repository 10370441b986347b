"""Export a run's synthetic images (the memory bank) as a reusable transfer set.

    python -m stars_jax.export_bank --workdir WORKDIR --out DIR

Writes ``DIR/train/NNN/IIIIII.png`` (one folder per class, by the label each image was
synthesised for; every class folder exists, so folder order is label order) and
``DIR/soft_labels.npz``: ``files`` (paths relative to DIR), ``labels`` (generating labels),
``teacher_logits`` ``[N, K]`` and ``teacher_preds`` (the run's teacher on each image). PNG is
lossless: the folder holds exactly the bank's pixels. Another student distills from it without
synthesising: ``--config.distill.mode=transfer_set --config.distill.transfer_set=DIR`` (the
teacher still gives the KD targets, on augmented views, as in every KD step).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import flags

from stars_jax import checkpoint, cli, errors
from stars_jax.apply import logits_fn
from stars_jax.model_dir import load_model_dir
from stars_jax.teacher import cached_teacher_dir


def read_bank(workdir: Path) -> dict:
    """The bank of the newest checkpoint in ``workdir``: valid rows of ``images`` (uint8
    ``[N, H, W, C]``), ``labels`` and ``preds``."""
    ckpt = Path(workdir).absolute() / "checkpoints"
    bank = checkpoint.read_bank(ckpt)
    if bank is None:
        raise errors.MissingInputError(
            f"No checkpoint in {ckpt}; export_bank reads the memory bank of a run's checkpoint "
            "(a data-free run of stars_jax.main)."
        )
    n = int(min(np.asarray(bank["count"]), len(bank["images"])))
    if n == 0:
        raise errors.InputError(f"The bank in {ckpt} is empty (no synthetic image kept yet).")
    return {k: np.asarray(bank[k][:n]) for k in ("images", "labels", "preds")}


def run_config(workdir: Path) -> ml_collections.ConfigDict:
    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise errors.MissingInputError(f"{path} not found: is {workdir} a stars_jax.main workdir?")
    return ml_collections.ConfigDict(json.loads(path.read_text())["config"])


def teacher_logits(config, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The run's teacher (``teacher.dir``, else its cache) on ``images``."""
    tdir = config.teacher.dir or cached_teacher_dir(config)
    loaded = load_model_dir(tdir)
    norm = loaded.meta["normalization"]
    fn = jax.jit(logits_fn(loaded.model, "teacher", norm["mean"], norm["std"]))
    variables = jax.device_put(loaded.variables)
    out = [
        np.asarray(fn(variables, images[i : i + batch_size]))
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out)


def export_bank(workdir, out, overwrite: bool = False) -> Path:
    """Writes the transfer set (module docstring); returns ``out``."""
    from PIL import Image

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise errors.InputError(f"{out} is not empty; pass --overwrite or another --out.")
    config = run_config(workdir)
    bank = read_bank(Path(workdir))
    logits = teacher_logits(config, bank["images"])
    num_classes = int(config.data.num_classes)
    width = max(3, len(str(num_classes - 1)))
    for c in range(num_classes):
        (out / "train" / f"{c:0{width}d}").mkdir(parents=True, exist_ok=True)
    files = []
    for i, (img, y) in enumerate(zip(bank["images"], bank["labels"], strict=True)):
        rel = f"train/{int(y):0{width}d}/{i:06d}.png"
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(out / rel)
        files.append(rel)
    np.savez(
        out / "soft_labels.npz",
        files=np.asarray(files),
        labels=bank["labels"].astype(np.int32),
        teacher_logits=logits.astype(np.float32),
        teacher_preds=bank["preds"].astype(np.int32),
    )
    print(f"Exported {len(files)} synthetic images ({num_classes} classes) to {out}", flush=True)
    return out


PROG = "python -m stars_jax.export_bank"
USAGE = f"{PROG} --workdir=WORKDIR --out=DIR [--overwrite]"


def define_flags(fv: flags.FlagValues) -> None:
    """The CLI's flags (``stars_jax.cli``)."""
    flags.DEFINE_string(
        "workdir", None, "A stars_jax.main workdir with checkpoints.", flag_values=fv
    )
    flags.DEFINE_string("out", None, "The transfer set's directory.", flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "Write into a non-empty --out.", flag_values=fv)
    flags.DEFINE_bool("debug", False, cli.DEBUG_HELP, flag_values=fv)
    flags.mark_flags_as_required(["workdir", "out"], flag_values=fv)


def run(args: flags.FlagValues) -> Path:
    return export_bank(args.workdir, args.out, args.overwrite)


def main(argv=None) -> Path:
    """CLI entry point (``argv`` with or without the program name); returns ``--out``."""
    return run(cli.parse(define_flags, argv, PROG))


if __name__ == "__main__":
    cli.run_main(define_flags, run, USAGE)
