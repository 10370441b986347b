"""Checks of the real data against the config, before any work, and the data's identity.

A dataset whose classes do not match ``data.num_classes`` trains a teacher to a NaN loss (a
label beyond the logits) or evaluates against the wrong classes; an empty class folder makes
"top-1 on N images" silently cover fewer classes. ``check_classes`` says what is wrong and how
to fix it; ``data_identity`` keys caches on what the data is, not on its configured name.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from stars_jax.errors import InputError


def class_counts(ds) -> np.ndarray:
    """Images per class of a ``data.Dataset``, in label order (zeros for empty classes)."""
    n = max(len(ds.class_names), int(ds.labels.max()) + 1 if len(ds.labels) else 0)
    return np.bincount(np.asarray(ds.labels), minlength=n)


def check_classes(ds, num_classes: int, where: str) -> None:
    """Raises an ``InputError`` if ``ds`` (the split ``where``) has another number of classes
    than ``data.num_classes`` or a label beyond it; warns about classes without images."""
    names, counts = ds.class_names, class_counts(ds)
    if len(names) != num_classes or len(counts) > num_classes:
        shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        raise InputError(
            f"The {where} has {len(names)} classes ({shown}) but data.num_classes is "
            f"{num_classes}. Set --config.data.num_classes={len(names)}, or point "
            "data.path at the dataset the config is for (a teacher from teacher.dir must "
            "have as many outputs)."
        )
    empty = [names[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        print(
            f"Warning: the {where} has no images of {len(empty)} of its {num_classes} classes "
            f"({', '.join(empty[:12])}); accuracies on it cover the other classes only.",
            flush=True,
        )


def teacher_accuracy_warning(top1: float, num_classes: int, n: int) -> str | None:
    """A warning when the teacher scores no better than about chance on the real test images
    (under twice 100 / ``num_classes`` %): the data's labels, class order or normalisation are
    then likely not the teacher's, and every accuracy of the run means little. None if fine."""
    chance = 100.0 / num_classes
    if n == 0 or top1 >= 2 * chance:
        return None
    return (
        f"Warning: the teacher scores {top1:.2f}% on these {n} test images, near chance "
        f"({chance:.1f}% for {num_classes} classes). The data may not be what the teacher was "
        "trained on: class folders are read in sorted name order, so check data.path, "
        "data.num_classes and the class order, and the teacher's input normalisation "
        '("normalization" in its model.json, set by convert --normalize). The run goes '
        "on, but its accuracies will say little."
    )


def check_trainable(ds, batch_size: int, where: str) -> None:
    """Enough images for one training batch (else the schedule has zero steps)."""
    if len(ds.labels) < batch_size:
        raise InputError(
            f"The {where} has {len(ds.labels)} images, fewer than one batch of "
            f"teacher.train_batch_size={batch_size}: lower it (--config.teacher."
            "train_batch_size=N) or give more images."
        )


def _folder_summary(path: Path) -> dict:
    """Per split directory: its class folders and how many files each holds (one listing per
    folder, no reads), so that another dataset under the same name keys differently."""
    out = {}
    for split in sorted(p for p in path.iterdir() if p.is_dir()):
        classes = sorted(p for p in split.iterdir() if p.is_dir())
        out[split.name] = {c.name: sum(1 for _ in c.iterdir()) for c in classes}
    return out


def data_identity(data_cfg) -> str:
    """A short hash of what ``config.data`` points at: the resolved path, the format, and a
    cheap summary of the files (class folders and their file counts; for files, their names
    and sizes)."""
    path = Path(data_cfg.path).expanduser()
    record = {"path": str(path.resolve()) if path.exists() else str(path), "kind": data_cfg.kind}
    if data_cfg.get("val_per_class", 0):  # a teacher trained without the validation part
        record["val"] = [int(data_cfg.val_per_class), int(data_cfg.get("val_seed", 0))]
    if path.is_dir():
        record["folders"] = _folder_summary(path)
        record["files"] = {p.name: p.stat().st_size for p in sorted(path.iterdir()) if p.is_file()}
    elif path.is_file():
        record["files"] = {path.name: path.stat().st_size}
    blob = json.dumps(record, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:10]
