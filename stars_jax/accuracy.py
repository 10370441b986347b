"""Top-1 / top-5 accuracy: the one accuracy loop of the project.

The main job, the teacher trainer and ``python -m stars_jax.evaluate`` all score with
``make_evaluator``, so a model directory scores in the CLI what its run reported.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from stars_jax import parallel
from stars_jax.apply import logits_fn

TOP_K = 5


def _batch_hits(logits_fn: Callable, variables, images, labels, valid) -> jax.Array:
    """``[k]`` counts of valid rows whose label is the top-1 (entry 0) ... among the top-k
    (entry k - 1) logits, k = min(5, K). Top-1 is the argmax, as everywhere else."""
    logits = logits_fn(variables, images)
    k = min(TOP_K, logits.shape[-1])
    top = jax.lax.top_k(logits, k)[1].at[:, 0].set(jnp.argmax(logits, -1))
    hit = jnp.cumsum(top == labels[:, None], axis=1) > 0
    return jnp.sum(hit & valid[:, None], axis=0)


def make_evaluator(logits_fn: Callable, mesh=None) -> Callable:
    """``evaluator(variables, images, labels, batch_size, progress=None) -> dict``: the one
    accuracy loop of the project (the main job and the CLI both use it).

    ``logits_fn(variables, images [B, H, W, C]) -> logits [B, K]`` (``apply.logits_fn``). Every
    batch has one shape, split over the mesh's data axis (default: all devices); the last one
    is filled with repeats of image 0 that a mask leaves out. Every process loads the same
    images and places only its own devices' shards. ``variables`` are used as given (placed
    by the caller), and are jit arguments rather than constants baked into the program.
    """
    mesh = parallel.make_mesh(-1) if mesh is None else mesh
    batch_hits = jax.jit(
        functools.partial(_batch_hits, logits_fn), out_shardings=parallel.replicated(mesh)
    )
    compiled = {}  # batch size -> (compiled step, compile seconds)

    def evaluator(variables, images, labels, batch_size: int, progress=None) -> dict:
        n = len(images)
        if n == 0 or len(labels) != n:
            raise ValueError(f"Need as many labels as images (> 0); got {n} images, {len(labels)}.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        parallel.check_batch("the evaluation batch size", batch_size, mesh)
        t0 = time.perf_counter()
        hits, compile_s = None, 0.0
        for start in range(0, n, batch_size):
            idx = np.arange(start, start + batch_size)
            valid = idx < n
            idx = np.where(valid, idx, 0)
            batch = parallel.put(
                (np.asarray(images)[idx], np.asarray(labels)[idx], valid),
                parallel.data_sharded(mesh),
            )
            if batch_size not in compiled:
                t_c = time.perf_counter()
                step = batch_hits.lower(variables, *batch).compile()
                compiled[batch_size] = (step, time.perf_counter() - t_c)
            step, compile_s = compiled[batch_size]
            h = np.asarray(parallel.fetch(step(variables, *batch)), np.int64)
            hits = h if hits is None else hits + h
            if progress is not None:
                progress(min(start + batch_size, n), n)
        seconds = time.perf_counter() - t0
        result = {
            "top1": 100.0 * float(hits[0]) / n,
            "n": n,
            "correct": int(hits[0]),
            "batch_size": batch_size,
            "compile_seconds": round(compile_s, 3),
            "seconds": round(seconds, 3),
            "images_per_second": round(n / seconds, 1),
        }
        if len(hits) == TOP_K:  # Only when K >= 5 (for K = 5 it is trivially 100 %).
            result["top5"] = 100.0 * float(hits[-1]) / n
        return result

    return evaluator


def evaluate(
    logits_fn: Callable,
    variables,
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int = 500,
    *,
    mesh=None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Accuracy of ``logits_fn`` with ``variables`` on ``images`` (``make_evaluator``).

    Args:
      logits_fn: ``(variables, x [B, H, W, C]) -> logits [B, K]``, e.g. ``LoadedModel.logits``.
      images: ``[N, H, W, C]``, uint8 (or whatever ``logits_fn`` accepts).
      labels: int ``[N]``.
      batch_size: images per call, rounded up to a multiple of the device count (and at most
        N rounded so); the last batch is filled and the filling ignored.
      progress: called as ``progress(done, n)`` after every batch.

    Returns:
      ``{"top1", "top5" (when K >= 5), "n", "correct", "batch_size", "compile_seconds",
      "seconds", "images_per_second"}``; accuracies in percent, ``seconds`` includes compiling.
    """
    mesh = parallel.make_mesh(-1) if mesh is None else mesh
    d = mesh.devices.size
    batch_size = min(batch_size, max(len(images), 1))  # no bigger than the data ...
    batch_size = -(-batch_size // d) * d  # ... and a multiple of the device count
    return make_evaluator(logits_fn, mesh)(variables, images, labels, batch_size, progress)


def student_evaluator(student, norm, mesh, test, batch_size: int) -> Callable:
    """``evaluate(variables) -> dict``: a spiking student's top-1 on ``test`` (``n`` images)
    and its firing rates per layer (and their mean) on the first test batch."""
    accuracy = make_evaluator(logits_fn(student, "student", *norm), mesh)
    rates_fn = jax.jit(
        logits_fn(student, "student", *norm, with_rates=True),
        out_shardings=parallel.replicated(mesh),
    )

    def evaluate_student(variables) -> dict:
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

    return evaluate_student
