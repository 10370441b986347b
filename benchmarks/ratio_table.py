"""How strongly each synthesis term acts, per synthesizer, with raw and with ratio weights.

For every synthesizer and weighting, a short run of the given config (its warm-up plus
``--student_rounds`` rounds, ``log.grad_ratio_every`` 1) logs ``synth/grad_ratio/<term>``: the
norm of each weighted term's gradient on the round's kept batch against the BN term's
(stars_jax.strength). The table gives their means over the student rounds, and for ratio
weights the raw weights the calibration chose. Runs are resumable workdirs under ``--workdir``.

  python benchmarks/ratio_table.py --config configs/default.py --workdir workdirs/ratios \
      --methods fast,nayer --ratio_l_rca 0.1 --ratio_l_tar 0.1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TERMS = ("bn", "ce", "adv", "rca", "tar")


def _run(config: str, method: str, workdir: Path, rounds: int, extra: list[str]) -> None:
    cmd = [
        sys.executable,
        "-m",
        "stars_jax.main",
        f"--config={config}:{method}",
        f"--workdir={workdir}",
        f"--config.distill.rounds={rounds}",
        "--config.log.grad_ratio_every=1",
        f"--config.distill.eval_every={rounds}",
        *extra,
    ]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def _means(workdir: Path) -> dict:
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    out = {}
    for term in TERMS:
        vals = [r[f"synth/grad_ratio/{term}"] for r in rows if f"synth/grad_ratio/{term}" in r]
        out[term] = float(np.mean(vals)) if vals else None
    return out


def _calibrated(workdir: Path) -> dict:
    states = sorted((workdir / "checkpoints").glob("*/run_state.json"))
    return json.loads(states[-1].read_text()).get("stars_weights", {}) if states else {}


def table(rows: list[dict]) -> str:
    head = "| synthesizer | weights | " + " | ".join(TERMS) + " | l_rca, l_tar used |"
    lines = [head, "|" + " --- |" * (len(TERMS) + 3)]
    for r in rows:
        cells = [f"{r['ratios'][t]:.3g}" if r["ratios"][t] is not None else "-" for t in TERMS]
        used = r["weights"]
        lines.append(f"| {r['method']} | {r['weighting']} | " + " | ".join(cells) + f" | {used} |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/default.py")
    p.add_argument("--workdir", required=True)
    p.add_argument("--methods", default="fast,nayer")
    p.add_argument("--warmup_rounds", type=int, default=5, help="the config's warm-up")
    p.add_argument("--student_rounds", type=int, default=6)
    p.add_argument("--ratio_l_rca", type=float, default=0.1)
    p.add_argument("--ratio_l_tar", type=float, default=0.1)
    p.add_argument("--extra", default="", help="more --config.x=v overrides, space-separated")
    args = p.parse_args(argv)
    rounds = args.warmup_rounds + args.student_rounds
    rows = []
    for method in args.methods.split(","):
        for weighting in ("raw", "ratio"):
            extra = args.extra.split()
            if weighting == "ratio":
                extra += [
                    "--config.synth.stars_weights=ratio",
                    f"--config.synth.l_rca={args.ratio_l_rca}",
                    f"--config.synth.l_tar={args.ratio_l_tar}",
                ]
            w = Path(args.workdir) / f"{method}_{weighting}"
            _run(args.config, method, w, rounds, extra)
            cal = _calibrated(w)
            used = "config's" if not cal else f"{cal['l_rca']:.3g}, {cal['l_tar']:.3g}"
            rows.append(dict(method=method, weighting=weighting, ratios=_means(w), weights=used))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    text = table(rows)
    print(text)
    (Path(args.workdir) / "ratio_table.md").write_text(text + "\n")
    return rows


if __name__ == "__main__":
    main()
