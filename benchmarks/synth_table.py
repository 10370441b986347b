"""One table from the summaries of main-job runs: student top-1 and the synthetic data's health.

  python benchmarks/synth_table.py DIR [DIR ...] > table.md

Each DIR is a workdir (``summary.json`` inside) or a ``*.summary.json`` file. Runs are grouped
by synthesizer; the STARS column says whether RCA/TAR/b_rca were on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load(path: str) -> dict:
    p = Path(path)
    return json.loads((p / "summary.json" if p.is_dir() else p).read_text())


def table(summaries: list[dict]) -> str:
    rows = [
        "| synthesizer | STARS | student top-1 % | rounds (warm-up) | KD steps | teacher top-1 "
        "on kept batches | class entropy | diversity | bank entropy | wall s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    real = None
    for s in sorted(summaries, key=lambda s: (s["method"], s["stars"])):
        h = s.get("synthesis", {})
        real = real or h.get("real_batch")
        f = lambda k, h=h: f"{h[k]:.3f}" if k in h else "-"
        rows.append(
            f"| {s['method']} | {'yes' if s['stars'] else 'no'} | {s['student']['top1']:.2f} | "
            f"{s['rounds']} ({h.get('warmup_rounds', 0)}) | {s['kd_steps']} | "
            f"{f('teacher_acc')} | {f('class_entropy')} | {f('diversity')} | "
            f"{f('bank_entropy')} | {s['wall_seconds']:.0f} |"
        )
    if real:
        rows.append(
            f"| real test batch | | | | | {real['teacher_acc']:.3f} | "
            f"{real['class_entropy']:.3f} | {real['diversity']:.3f} | | |"
        )
    seeds = sorted({s["seed"] for s in summaries})
    budgets = sorted({s["time_budget_s"] for s in summaries})
    teachers = sorted({f"{s['teacher']['arch']} ({s['teacher']['top1']:.2f} %)" for s in summaries})
    head = (
        f"{summaries[0]['dataset']}; teacher {', '.join(teachers)}; student "
        f"{summaries[0]['student']['arch']} T={summaries[0]['student']['time_steps']}; seeds "
        f"{seeds}; time budgets {budgets} s\n\n"
    )
    return head + "\n".join(rows) + "\n"


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sys.stdout.write(table([load(p) for p in sys.argv[1:]]))
