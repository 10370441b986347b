"""benchmarks/plot_curves.py on a sweep laid out as stars_jax.sweep lays it out."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("matplotlib")
ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("plot_curves", ROOT / "benchmarks/plot_curves.py")
plot_curves = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plot_curves)


def _run(rdir: Path, top1_by_round: dict, warmup=2, kd_steps=10, per_method=False):
    rdir.mkdir(parents=True)
    synth = (
        {"method": "fast", "fast": {"warmup_rounds": warmup}}
        if per_method
        else {
            "method": "fast",
            "warmup_rounds": warmup,
        }
    )
    config = {"synth": synth, "distill": {"kd_steps": kd_steps, "mode": "data_free"}}
    (rdir / "config.json").write_text(json.dumps({"config": config}))
    lines = [{"round": r, "kd/loss": 1.0} for r in range(max(top1_by_round) + 1)]
    for r, top1 in top1_by_round.items():
        lines[r]["eval/student_top1"] = top1
    (rdir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_kd_steps_from_config_both_layouts(tmp_path):
    _run(tmp_path / "flat", {3: 0.5, 5: 0.6})
    _run(tmp_path / "nested", {3: 0.5, 5: 0.6}, per_method=True)
    for name in ("flat", "nested"):  # rounds 3 and 5 after 2 warm-up rounds: 2 and 4 KD rounds
        assert plot_curves.read_curve(tmp_path / name, "eval/student_top1") == {20: 0.5, 40: 0.6}


def test_sweep_mean_and_bands(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    a = [{3: 40.0, 5: 50.0}, {3: 44.0, 5: 56.0}, {3: 42.0, 5: 59.0}]  # percent, as runs log them
    for seed, curve in enumerate(a):
        _run(sweep / "runs" / "base" / f"seed{seed}", curve)
    _run(sweep / "runs" / "stars" / "seed0", {3: 45.0, 5: 61.0})
    groups = plot_curves.sweep_runs(sweep)
    assert [p.name for p in groups["base"]] == ["seed0", "seed1", "seed2"]
    curves = [plot_curves.read_curve(d, "eval/student_top1") for d in groups["base"]]
    steps, mean, low, high = plot_curves.summarise(curves, "range")
    np.testing.assert_allclose(steps, [20, 40])
    np.testing.assert_allclose(mean, [42.0, (50.0 + 56.0 + 59.0) / 3])
    np.testing.assert_allclose(low, [40.0, 50.0])
    np.testing.assert_allclose(high, [44.0, 59.0])
    _, _, low, high = plot_curves.summarise(curves, "ci")
    half = 2.0 / np.sqrt(3) * 4.302652729911275  # sd 2 at the first step; t(0.975, 2)
    np.testing.assert_allclose([low[0], high[0]], [42.0 - half, 42.0 + half], rtol=1e-9)

    out = tmp_path / "curves.png"
    assert plot_curves.main(["--sweep", str(sweep), "--out", str(out), "--band", "ci"]) == 0
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size[0] > 300
    printed = capsys.readouterr().out  # the values as logged (percent), not rescaled
    assert "base: n=3, final eval/student_top1 55.00 % at 40 KD steps" in printed


def test_bad_input_is_one_line(tmp_path, capsys):
    assert plot_curves.main(["--sweep", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    assert "no runs/VARIANT/seedK" in capsys.readouterr().err
    assert plot_curves.main(["--run", "oops", "--out", str(tmp_path / "x.png")]) == 2
