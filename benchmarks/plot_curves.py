"""Accuracy against KD steps, as a PNG: one line per variant (mean over seeds) and a band.

  python benchmarks/plot_curves.py --sweep workdirs/sweep --out curves.png
  python benchmarks/plot_curves.py --run base=workdirs/a --run stars=workdirs/b --out c.png
  python benchmarks/plot_curves.py --sweep workdirs/sweep --metric eval/ema_top1 --band ci

A sweep (``stars_jax.sweep``) keeps its runs in ``SWEEP/runs/VARIANT/seedK``; each variant is
drawn as the mean over its seeds at every KD step that all of them logged, with a band of
min-max (``--band range``, the default), one standard deviation (``sd``) or a 95 % Student-t
interval of the mean (``ci``). ``--run NAME=WORKDIR`` adds a run by hand (repeat a NAME to
give it several seeds). The x axis is the number of KD steps taken by the end of each logged
round: ``kd/steps`` where the run logged it, else computed from its ``config.json``
(synthesis-only warm-up rounds take none). The y axis is ``eval/student_top1`` (or
``eval/ema_top1``, the weight average's) on the run's ``data.test_split``: the validation part
where a run set ``test_split=val``; runs log them in percent. Needs matplotlib
(``pip install matplotlib``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats

BANDS = ("range", "sd", "ci")


def _warmup_and_kd_steps(config: dict) -> tuple[int, int]:
    """(synthesis-only warm-up rounds, KD steps a round) of a run's resolved config."""
    synth, distill = config.get("synth", {}), config.get("distill", {})
    warmup = synth.get("warmup_rounds")
    if warmup is None:  # per-method sections: synth.<method>.warmup_rounds
        warmup = synth.get(synth.get("method", ""), {}).get("warmup_rounds", 0)
    if distill.get("mode", "data_free") != "data_free":
        warmup = 0
    return int(warmup), int(distill.get("kd_steps", 1))


def read_curve(workdir: Path, metric: str) -> dict[int, float]:
    """``{KD steps: metric}`` from a workdir's ``metrics.jsonl`` (rounds that logged it)."""
    workdir = Path(workdir)
    path = workdir / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{workdir}: no metrics.jsonl (not a stars_jax workdir?).")
    config_path = workdir / "config.json"
    config = json.loads(config_path.read_text())["config"] if config_path.exists() else {}
    warmup, kd_steps = _warmup_and_kd_steps(config)
    curve = {}
    for line in path.read_text().splitlines():
        record = json.loads(line) if line.strip() else {}
        if metric not in record:
            continue
        steps = record.get("kd/steps", max(record["round"] + 1 - warmup, 0) * kd_steps)
        curve[int(steps)] = float(record[metric])
    return curve


def sweep_runs(sweep: Path) -> dict[str, list[Path]]:
    """``{variant: [seed workdirs]}`` of a sweep directory, in seed order."""
    runs = defaultdict(list)
    for rdir in sorted(Path(sweep).glob("runs/*/seed*"), key=lambda p: (p.parent.name, _seed(p))):
        if (rdir / "metrics.jsonl").exists():
            runs[rdir.parent.name].append(rdir)
    if not runs:
        raise FileNotFoundError(f"{sweep}: no runs/VARIANT/seedK/metrics.jsonl under it.")
    return dict(runs)


def _seed(rdir: Path) -> int:
    digits = rdir.name.removeprefix("seed")
    return int(digits) if digits.isdigit() else -1


def summarise(curves: list[dict[int, float]], band: str) -> tuple[np.ndarray, ...]:
    """(steps, mean, low, high) over the KD steps every curve logged."""
    common = sorted(set.intersection(*(set(c) for c in curves)))
    values = np.array([[c[s] for s in common] for c in curves], np.float64)  # [seeds, steps]
    mean = values.mean(0)
    if band == "range":
        low, high = values.min(0), values.max(0)
    else:
        n = len(curves)
        sd = values.std(0, ddof=1) if n > 1 else np.zeros_like(mean)
        half = sd if band == "sd" else sd / np.sqrt(n) * stats.t.ppf(0.975, max(n - 1, 1))
        low, high = mean - half, mean + half
    return np.array(common), mean, low, high


def plot(groups: dict[str, list[Path]], metric: str, band: str, out: Path, title: str = ""):
    """Draws every group's mean curve and band to ``out`` (PNG); returns what was drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    drawn = {}
    for name, dirs in groups.items():
        curves = [c for c in (read_curve(d, metric) for d in dirs) if c]
        if not curves:
            print(f"{name}: no {metric} logged in {len(dirs)} run(s); skipped.", file=sys.stderr)
            continue
        steps, mean, low, high = summarise(curves, band)
        (line,) = ax.plot(steps, mean, marker="o", ms=3, label=f"{name} (n={len(curves)})")
        if len(curves) > 1:
            ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
        drawn[name] = {"n": len(curves), "steps": steps.tolist(), "mean": mean.tolist()}
    if not drawn:
        raise ValueError(f"No run logged {metric!r}: nothing to draw.")
    band_text = {"range": "min-max", "sd": "±1 SD", "ci": "95 % CI of the mean"}[band]
    ax.set(xlabel="KD steps", ylabel=f"{metric} (%)", title=title or f"{metric}; band: {band_text}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return drawn


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sweep", action="append", default=[], help="A sweep directory (repeatable).")
    p.add_argument("--run", action="append", default=[], help="NAME=WORKDIR (repeatable).")
    p.add_argument("--metric", default="eval/student_top1", help="A key of metrics.jsonl.")
    p.add_argument("--band", default="range", choices=BANDS)
    p.add_argument("--title", default="")
    p.add_argument("--out", required=True, help="The PNG to write.")
    args = p.parse_args(argv)
    groups: dict[str, list[Path]] = defaultdict(list)
    try:
        for sweep in args.sweep:
            for name, dirs in sweep_runs(Path(sweep)).items():
                groups[name].extend(dirs)
        for spec in args.run:
            name, sep, path = spec.partition("=")
            if not sep or not name or not path:
                raise ValueError(f"--run {spec!r}: expected NAME=WORKDIR.")
            groups[name].append(Path(path))
        if not groups:
            raise ValueError("Nothing to draw: give --sweep DIR or --run NAME=WORKDIR.")
        drawn = plot(groups, args.metric, args.band, Path(args.out), args.title)
    except (FileNotFoundError, ValueError) as err:
        print(f"plot_curves: {err}", file=sys.stderr)
        return 2
    for name, d in drawn.items():
        final = f"{d['mean'][-1]:.2f} % at {d['steps'][-1]} KD steps"
        print(f"{name}: n={d['n']}, final {args.metric} {final}")
    print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
