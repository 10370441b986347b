"""Top-1 / top-5 accuracy of a model directory on a labelled image set.

    python -m stars_jax.evaluate --model workdirs/teachers/wrn40_2 \
        --data_dir ../shared/data/cifar10-jpeg --split test

Progress goes to stderr; the last stdout line is one JSON object (``top1`` in percent, ``n``,
the model's arch/kind, the split and timings), so scripts can read ``tail -n 1``.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import numpy as np

from stars_jax import data as data_lib
from stars_jax.model_dir import load_model_dir

TOP_K = 5


def _topk_indices(predict: Callable, x: jax.Array) -> jax.Array:
    """``x [B, H, W, C]`` -> indices of the ``min(5, K)`` largest logits, best first."""
    logits = predict(x)
    return jax.lax.top_k(logits, min(TOP_K, logits.shape[-1]))[1]


class CompiledStep(NamedTuple):
    step: Callable[[np.ndarray], jax.Array]  # x [B, H, W, C] -> top-k indices [B, k].
    k: int  # min(5, K).
    compile_seconds: float


def compile_topk(predict: Callable, example: np.ndarray) -> CompiledStep:
    """Traces and compiles ``predict`` (plus top-k) once, for the shape/dtype of ``example``.

    A ``jax.tree_util.Partial`` predict (``LoadedModel.predict``) is passed *as an argument* of
    the jitted step, so its bound variables are jit inputs rather than constants baked into the
    program (which would copy every weight into the HLO and slow compilation badly).

    Args:
      predict: ``x [B, H, W, C] -> logits [B, K]``.
      example: one batch with the shape and dtype of every later call.
    """
    t0 = time.perf_counter()
    if isinstance(predict, jax.tree_util.Partial):
        compiled = jax.jit(_topk_indices).lower(predict, example).compile()
        step = functools.partial(compiled, predict)
    else:
        compiled = jax.jit(functools.partial(_topk_indices, predict)).lower(example).compile()
        step = compiled
    k = compiled.out_info.shape[-1]
    return CompiledStep(step, k, time.perf_counter() - t0)


def _pad_to(batch: np.ndarray, size: int) -> np.ndarray:
    """Zero-pads the leading axis to ``size`` so the last batch reuses the compiled shape."""
    if len(batch) == size:
        return batch
    pad = np.zeros((size - len(batch), *batch.shape[1:]), batch.dtype)
    return np.concatenate([batch, pad])


def evaluate(
    predict: Callable,
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int = 500,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Accuracy of ``predict`` on ``images``, with one compiled batch shape.

    Args:
      predict: ``x [B, H, W, C] -> logits [B, K]``, e.g. ``LoadedModel.predict``.
      images: ``[N, H, W, C]``, uint8 (or whatever ``predict`` accepts).
      labels: int ``[N]``.
      batch_size: images per call; the last batch is zero-padded to it and the padding ignored.
      progress: called as ``progress(done, n)`` after every batch.

    Returns:
      ``{"top1", "top5" (when K >= 5), "n", "correct", "batch_size", "compile_seconds",
      "seconds", "images_per_second"}``; accuracies in percent, ``seconds`` includes compiling.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    n = len(images)
    if n == 0 or len(labels) != n:
        raise ValueError(f"Need as many labels as images (> 0); got {n} images, {len(labels)}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    batch_size = min(batch_size, n)  # No point compiling a batch larger than the data.
    t0 = time.perf_counter()
    compiled = compile_topk(predict, images[:batch_size])
    correct = np.zeros(compiled.k, np.int64)  # correct[j]: label among the top j + 1.
    for start in range(0, n, batch_size):
        batch = images[start : start + batch_size]
        top = np.asarray(compiled.step(_pad_to(batch, batch_size)))[: len(batch)]
        hit = top == labels[start : start + len(batch), None]
        correct += np.cumsum(hit, axis=1).sum(axis=0)
        if progress is not None:
            progress(start + len(batch), n)
    seconds = time.perf_counter() - t0
    result = {
        "top1": 100.0 * float(correct[0]) / n,
        "n": n,
        "correct": int(correct[0]),
        "batch_size": batch_size,
        "compile_seconds": round(compiled.compile_seconds, 3),
        "seconds": round(seconds, 3),
        "images_per_second": round(n / seconds, 1),
    }
    if compiled.k == TOP_K:  # Only when K >= 5 (for K = 5 it is trivially 100 %).
        result["top5"] = 100.0 * float(correct[-1]) / n
    return result


def check_dataset(images_shape: Sequence[int], num_dataset_classes: int, meta: dict) -> None:
    """Raises ValueError when a dataset does not fit a model directory's input or head."""
    want = tuple(meta["input_shape"])
    got = tuple(images_shape[1:])
    if got != want:
        raise ValueError(
            f"Dataset images are {got} (H, W, C) but the model ({meta['arch']}) expects {want}; "
            "evaluate on a dataset of that resolution and channel count, or convert/train a "
            "model for this one."
        )
    if num_dataset_classes != meta["num_classes"]:
        raise ValueError(
            f"Dataset has {num_dataset_classes} classes but the model ({meta['arch']}) has "
            f"num_classes={meta['num_classes']}; use the dataset the model was trained for."
        )


def _stderr_progress(t0: float) -> Callable[[int, int], None]:
    def report(done: int, n: int) -> None:
        rate = done / max(time.perf_counter() - t0, 1e-9)
        print(f"  eval {done}/{n} ({rate:.0f} img/s)", file=sys.stderr, flush=True)

    return report


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m stars_jax.evaluate", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--model", required=True, help="model directory (see stars_jax.model_dir)")
    p.add_argument("--data_dir", required=True, help="dataset path (see stars_jax.data)")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=None, help="class-balanced subset of N images")
    p.add_argument("--batch_size", type=int, default=500)
    p.add_argument(
        "--data_kind", default="auto", help=f"auto | {' | '.join(sorted(data_lib.LOADERS))}"
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    """CLI entry point; prints and returns the result record."""
    args = _parse_args(argv)
    t0 = time.perf_counter()
    loaded = load_model_dir(args.model)
    meta = loaded.meta
    kind = data_lib.detect_kind(args.data_dir) if args.data_kind == "auto" else args.data_kind
    print(f"loading {kind} {args.data_dir} split={args.split}", file=sys.stderr, flush=True)
    ds = data_lib.load_dataset(kind, args.data_dir, args.split, args.limit)
    check_dataset(ds.images.shape, len(ds.class_names), meta)
    load_seconds = time.perf_counter() - t0
    print(
        f"evaluating {meta['kind']} {meta['arch']} on {len(ds.labels)} images "
        f"(loaded in {load_seconds:.1f} s)",
        file=sys.stderr,
        flush=True,
    )
    result = evaluate(
        loaded.predict,
        ds.images,
        ds.labels,
        args.batch_size,
        progress=_stderr_progress(time.perf_counter()),
    )
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
    try:
        main()
    except (ValueError, FileNotFoundError) as err:  # Bad input: the message is the report.
        sys.exit(f"error: {err}")
