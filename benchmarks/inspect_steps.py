"""What the two hot steps hand to XLA on a GPU or TPU, read on any machine.

Lowers the synthesis and KD steps of ``bench_steps.py`` for ``--platform`` (cuda by default:
JAX lowers for a platform it does not have) and counts what matters for speed in the
StableHLO: convolutions and matmuls by operand dtype (the bf16 path must not fall back to f32
matrix work), loops (the LIF scan should be unrolled at small T), host callbacks (round trips),
transposes and dtype converts. It reads the module XLA starts from, not the optimised one:
for fusions and layouts after compilation use ``bench_steps.py --dump_hlo`` on the device.

  python benchmarks/inspect_steps.py --tiny            # seconds, any machine
  python benchmarks/inspect_steps.py --platform cuda   # the reference setting
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_steps import _setting, jax_cases  # noqa: E402

_OP = re.compile(r"=\s+(?:\"?)(stablehlo\.[a-z_]+|func\.call|call)\b")
_TENSOR = re.compile(r"tensor<(?:[0-9?]+x)*([a-z]+[0-9]*)>")
MATRIX_OPS = ("stablehlo.convolution", "stablehlo.dot_general")


def lower_text(fn, carry, args, platform: str) -> str:
    traced = jax.jit(fn, donate_argnums=0).trace(carry, *args)
    return traced.lower(lowering_platforms=(platform,)).as_text()


def summarize(text: str) -> dict:
    """Op counts of a StableHLO module; matrix ops keyed by ``op[operand dtypes->result]``."""
    ops, matrix, targets = collections.Counter(), collections.Counter(), collections.Counter()
    for line in text.splitlines():
        m = _OP.search(line)
        if not m:
            continue
        op = m.group(1)
        ops[op] += 1
        if op in MATRIX_OPS:
            sig = line.rsplit(" : ", 1)[-1]
            ins, _, out = sig.partition("->")
            dtypes = ",".join(_TENSOR.findall(ins))
            matrix[f"{op.split('.')[-1]}[{dtypes}->{','.join(_TENSOR.findall(out))}]"] += 1
        elif op == "stablehlo.custom_call":
            target = re.search(r"@([\w.]+)|call_target_name = \"([^\"]+)\"", line)
            targets[next(g for g in target.groups() if g) if target else "?"] += 1
    return {
        "matrix_ops": dict(matrix),
        "while": ops["stablehlo.while"],
        "custom_calls": dict(targets),
        "host_callbacks": sum(n for t, n in targets.items() if "callback" in t.lower()),
        "transpose": ops["stablehlo.transpose"],
        "convert": ops["stablehlo.convert"],
        "ops": sum(ops.values()),
    }


def inspect(tiny: bool, dtypes: list[str], platform: str) -> dict:
    s = _setting(tiny)
    report = {}
    for dtype in dtypes:
        for name, fn, carry, args in jax_cases(s, dtype):
            report[f"{name}/{dtype}"] = summarize(lower_text(fn, carry, args, platform))
    return report


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--platform", default="cuda", help="cuda, rocm, tpu or cpu")
    p.add_argument("--dtypes", default="float32,bfloat16")
    args = p.parse_args(argv)
    report = inspect(args.tiny, args.dtypes.split(","), args.platform)
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
