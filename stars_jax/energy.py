"""Synaptic operations and an energy estimate: the figures SNN papers report.

Every convolution and dense layer of a model is intercepted (``flax.linen.intercept_methods``)
and its operations counted on the actual input:
- input all 0/1 (spikes): accumulates (ACs), counted exactly: for every output position and
  output channel, the number of active inputs in its receptive field;
- any other input (the images into the stem, the averaged features into a classifier):
  multiply-accumulates (MACs) of the dense layer, whatever the values.
An ANN teacher's layers are all counted as MACs. Energy = ACs x ``pj_per_ac`` + MACs x
``pj_per_mac``; the defaults are the 45 nm figures SNN papers quote (0.9 pJ per 32-bit float
add, 4.6 pJ per multiply-add; Horowitz, ISSCC 2014). Biases, BN, LIF updates and pooling are
not counted (as in those papers). The students' stem runs once per image, not per time step
(direct encoding), and is counted so.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from stars_jax import parallel
from stars_jax.apply import normalize

PJ_PER_AC = 0.9
PJ_PER_MAC = 4.6


def _conv_counts(module: nn.Conv, x):
    """(ACs if ``x`` is binary, MACs of the dense layer), summed over the batch."""
    dilation = np.atleast_1d(module.kernel_dilation or 1)
    if module.feature_group_count != 1 or np.any(dilation != 1):
        raise NotImplementedError("op counts of grouped or dilated convolutions")
    kh, kw = module.kernel_size
    cin = x.shape[-1]
    ones = jnp.ones((kh, kw, cin, 1), jnp.float32)
    active = jax.lax.conv_general_dilated(
        (x != 0).astype(jnp.float32),
        ones,
        window_strides=module.strides or (1, 1),
        padding=module.padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    positions = active.size  # N x H_out x W_out
    return jnp.sum(active) * module.features, positions * kh * kw * cin * module.features


def _dense_counts(module: nn.Dense, x):
    rows = x.size // x.shape[-1]
    return (
        jnp.sum((x != 0).astype(jnp.float32)) * module.features,
        rows * x.shape[-1] * module.features,
    )


def op_counts_fn(model, kind: str, mean, std) -> Callable:
    """``fn(variables, images) -> {layer path: (ACs, MACs)}`` summed over the batch, for a
    model in inference mode (``kind``: "student" or "teacher"; a teacher counts only MACs)."""

    def fn(variables, images):
        counts = {}

        def intercept(next_fun, args, kwargs, context):
            module = context.module
            if context.method_name == "__call__" and isinstance(module, (nn.Conv, nn.Dense)):
                x = args[0]
                count = _conv_counts if isinstance(module, nn.Conv) else _dense_counts
                acs, macs = count(module, x)
                binary = jnp.all((x == 0) | (x == 1)) if kind == "student" else False
                name = "/".join(module.path) if module.path else module.name
                counts[name] = (
                    jnp.where(binary, acs, 0.0),
                    jnp.where(binary, 0.0, jnp.float32(macs)),
                )
            return next_fun(*args, **kwargs)

        x = normalize(images, mean, std)
        with nn.intercept_methods(intercept):
            if kind == "student":
                model.apply(variables, x, mutable=["firing_rates"])
            else:
                model.apply(variables, x)
        return counts

    return fn


def count_ops(fn, variables, images, batch_size: int, mesh=None) -> dict[str, tuple[float, float]]:
    """``{layer: (ACs, MACs)}`` per image, averaged over ``images`` (a multiple of
    ``batch_size`` is not needed: the last batch is counted as it is)."""
    jitted = jax.jit(fn)
    totals: dict[str, np.ndarray] = {}
    n = len(images)
    for i in range(0, n, batch_size):
        batch = images[i : i + batch_size]
        if mesh is not None and len(batch) % mesh.devices.size == 0:
            batch = parallel.put(batch, parallel.data_sharded(mesh))
        out = jax.device_get(jitted(variables, batch))
        for name, (acs, macs) in out.items():
            totals[name] = totals.get(name, 0.0) + np.array([acs, macs], np.float64)
    return {name: (float(v[0] / n), float(v[1] / n)) for name, v in totals.items()}


def energy_report(
    student_ops: dict, teacher_ops: dict | None = None, pj_per_ac=PJ_PER_AC, pj_per_mac=PJ_PER_MAC
) -> dict:
    """Per-image totals and energy (microjoules) of the student, and of the teacher if given."""

    def totals(ops):
        acs = sum(a for a, _ in ops.values())
        macs = sum(m for _, m in ops.values())
        return {
            "acs": acs,
            "macs": macs,
            "energy_uj": (acs * pj_per_ac + macs * pj_per_mac) * 1e-6,
        }

    report = {
        "pj_per_ac": pj_per_ac,
        "pj_per_mac": pj_per_mac,
        "student": totals(student_ops),
        "student_layers": {k: {"acs": a, "macs": m} for k, (a, m) in student_ops.items()},
    }
    if teacher_ops is not None:
        report["teacher"] = totals(teacher_ops)
        report["student_over_teacher_energy"] = (
            report["student"]["energy_uj"] / report["teacher"]["energy_uj"]
        )
    return report


def format_report(report: dict) -> str:
    """The report as a small console table."""
    lines = [f"{'layer':<28} {'ACs/image':>14} {'MACs/image':>14}"]
    for name, v in report["student_layers"].items():
        lines.append(f"{name:<28} {v['acs']:>14,.0f} {v['macs']:>14,.0f}")
    s = report["student"]
    lines.append(
        f"{'student total':<28} {s['acs']:>14,.0f} {s['macs']:>14,.0f}   "
        f"{s['energy_uj']:.3f} uJ/image"
    )
    if "teacher" in report:
        t = report["teacher"]
        lines.append(
            f"{'teacher (ANN) total':<28} {0:>14,.0f} {t['macs']:>14,.0f}   "
            f"{t['energy_uj']:.3f} uJ/image ({report['student_over_teacher_energy']:.2f}x)"
        )
    lines.append(
        f"(energy at {report['pj_per_ac']} pJ/AC and {report['pj_per_mac']} pJ/MAC, 45 nm)"
    )
    return "\n".join(lines)


def model_ops(model, kind: str, variables, images, mean, std, batch_size: int) -> dict:
    """``{layer: (ACs, MACs)}`` per image of ``model`` on ``images`` (one device)."""
    variables = jax.device_put(variables)
    return count_ops(op_counts_fn(model, kind, mean, std), variables, images, batch_size)
