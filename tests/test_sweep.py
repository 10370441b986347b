"""The ablation runner: argument parsing, paired statistics (closed forms), orchestration
(skip finished runs, retry failed ones) with a stand-in main job, and one real tiny run."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from stars_jax import stats as stats_lib
from stars_jax import sweep
from stars_jax.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

# A stand-in for stars_jax.main: writes summary.json with top1 = 70 + seed + bonus (from
# --config.x.bonus), fails for --config.x.fail=1, and counts its calls in WORKDIR/calls.
FAKE_MAIN = """
import json, sys
from pathlib import Path
args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
workdir = Path(args["workdir"])
workdir.mkdir(parents=True, exist_ok=True)
with open(workdir / "calls", "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\\n")
if args.get("config.x.fail") == "1" and not (workdir / "fixed").exists():
    sys.exit(3)
top1 = 70 + int(args["config.seed"]) + float(args.get("config.x.bonus", 0))
top1 += 0.5 * int(args["config.seed"]) * float(args.get("config.x.bonus", 0))
(workdir / "summary.json").write_text(json.dumps({"student": {"top1": top1}}))
"""


def test_parsing_and_its_errors():
    assert sweep.parse_grid("synth.rca_sign=-1,1") == ("synth.rca_sign", ["-1", "1"])
    assert sweep.parse_grid("synth.tar_k=(1.0,2.0),(1.5,)") == (
        "synth.tar_k",
        ["(1.0,2.0)", "(1.5,)"],
    )
    v = sweep.parse_variant("base:synth.l_rca=0, distill.b_rca=0")
    assert v == sweep.Variant("base", (("synth.l_rca", "0"), ("distill.b_rca", "0")))
    assert sweep.parse_variant("stars:") == sweep.Variant("stars", ())
    assert sweep.parse_seeds("0-3,9") == [0, 1, 2, 3, 9]
    for bad in ("synth.l_tar", "synth.l_tar=", "l_tar=0,1", "synth.l_tar=0,0"):
        with pytest.raises(ValueError, match="grid"):
            sweep.parse_grid(bad)
    for bad in ("base", "base:synth.l_rca", "a b:synth.l_rca=0"):
        with pytest.raises(ValueError, match="variant"):
            sweep.parse_variant(bad)
    for bad in ("", "a-b", "1,1"):
        with pytest.raises(ValueError, match="seeds"):
            sweep.parse_seeds(bad)
    grid = [("synth.l_tar", ["0", "1"]), ("synth.rca_sign", ["-1", "1"])]
    names = [v.name for v in sweep.expand([sweep.Variant("", ())], grid)]
    assert names == [
        "synth.l_tar=0,synth.rca_sign=-1",
        "synth.l_tar=0,synth.rca_sign=1",
        "synth.l_tar=1,synth.rca_sign=-1",
        "synth.l_tar=1,synth.rca_sign=1",
    ]
    two = sweep.expand([sweep.parse_variant("a:"), sweep.parse_variant("b:x.y=1")], grid[:1])
    assert [v.name for v in two] == [
        "a,synth.l_tar=0",
        "a,synth.l_tar=1",
        "b,synth.l_tar=0",
        "b,synth.l_tar=1",
    ]
    assert two[3].overrides == (("x.y", "1"), ("synth.l_tar", "1"))
    with pytest.raises(ConfigError, match="one argument"):
        sweep.parse_args(["--config", "c.py", "--workdir", "w", "--config.a.b", "1"])
    args, shared = sweep.parse_args(["--config=c.py", "--workdir", "w", "--config.a.b=1"])
    assert (args.config, args.workdir, args.seeds, shared) == (
        "c.py",
        "w",
        "0-7",
        ["--config.a.b=1"],
    )


def test_paired_interval_closed_form():
    # Differences 1, 2, 3: mean 2, sd 1, t_{0.975, 2} = 4.302652729911275.
    mean, lo, hi = sweep.interval(np.array([1.0, 2.0, 3.0]))
    half = 4.302652729911275 / np.sqrt(3)
    assert mean == 2.0 and lo == pytest.approx(2 - half) and hi == pytest.approx(2 + half)
    assert np.isnan(sweep.interval(np.array([5.0]))[1])
    # Pairing removes the seed effect: b = a + 1 exactly gives a zero-width interval at +1,
    # though the unpaired spread of each variant is large.
    a = {0: 60.0, 1: 70.0, 2: 80.0, 3: 65.0}
    rows = sweep.summarize({"a": a, "b": {s: v + 1 for s, v in a.items()}, "c": {9: 1.0}}, "a")
    b = rows[1]["paired"]
    assert b["mean"] == pytest.approx(1) and b["ci95"] == pytest.approx([1, 1]) and b["wins"] == 4
    assert rows[1]["std"] == pytest.approx(np.std(list(a.values()), ddof=1))
    assert "paired" not in rows[0] and "paired" not in rows[2]  # reference; no shared seed
    md = sweep.markdown(rows, "a", "student.top1", "# t")
    assert "| b | 4 | 69.75 |" in md and "(reference)" in md and "no shared seeds" in md


def test_sweep_runs_skips_and_retries(tmp_path, monkeypatch, capsys):
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "fake_main.py").write_text(FAKE_MAIN)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "fake"))
    work = tmp_path / "sweep"
    argv = [
        "--config",
        "cfg.py",
        "--workdir",
        str(work),
        "--module",
        "fake_main",
        "--variant",
        "base:",
        "--variant",
        "plus:x.bonus=1",
        "--grid",
        "x.fail=0,1",
        "--seeds",
        "0-2",
        "--parallel",
        "2",
        "--config.a.b=7",
    ]
    assert sweep.main(argv) == 1  # the x.fail=1 runs fail
    out = capsys.readouterr().out
    assert "12 runs, 0 already finished, 12 to run, 2 at a time" in out and "FAILED (exit 3" in out
    record = json.loads((work / "sweep.json").read_text())
    rows = {r["variant"]: r for r in record["results"]}
    assert record["reference"] == "base,x.fail=0" and len(record["failed"]) == 6
    plus = rows["plus,x.fail=0"]
    assert plus["values"] == {"0": 71.0, "1": 72.5, "2": 74.0} and plus["paired"]["wins"] == 3
    assert plus["paired"]["mean"] == pytest.approx(1.5)  # 1 + 0.5 * mean seed
    assert rows["base,x.fail=1"]["n"] == 0
    calls = (sweep.run_dir(work, sweep.Variant("plus,x.fail=0", ()), 1) / "calls").read_text()
    assert "--config.seed=1 --config.a.b=7 --config.x.bonus=1 --config.x.fail=0" in calls
    # A rerun skips the finished runs and retries the failed ones (now fixed).
    for d in (work / "runs").glob("*x.fail=1/seed*"):
        (d / "fixed").touch()
    assert sweep.main(argv) == 0
    assert "6 already finished, 6 to run" in capsys.readouterr().out
    assert len(calls.splitlines()) == 1  # not rerun
    rows = {r["variant"]: r for r in json.loads((work / "sweep.json").read_text())["results"]}
    assert rows["plus,x.fail=1"]["paired"]["n"] == 3 and (work / "sweep.md").exists()
    default = str(ROOT / "configs/default.py")
    assert sweep.main(["--config", default, "--workdir", "w", "--bogus"]) == 2
    assert "Unknown command line flag 'bogus'" in capsys.readouterr().err
    assert sweep.main([*argv[:4], "--reference", "nope"]) == 2
    assert "not a variant" in capsys.readouterr().err


def test_one_real_tiny_run(tmp_path, monkeypatch):
    from tests.test_train import TINY, make_tiny_data

    data = make_tiny_data(tmp_path / "data")
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), *sys.path]))
    argv = [
        "--config",
        f"{TINY}:{data}",
        "--workdir",
        str(tmp_path / "sw"),
        "--seeds",
        "0",
        f"--config.teacher.cache_dir={tmp_path / 'cache'}",
        "--config.distill.rounds=2",
        "--config.distill.eval_every=1",
    ]
    assert sweep.main(argv) == 0
    row = json.loads((tmp_path / "sw" / "sweep.json").read_text())["results"][0]
    summary = json.loads((tmp_path / "sw" / "runs" / "run" / "seed0" / "summary.json").read_text())
    assert row["variant"] == "run" and row["values"] == {"0": summary["student"]["top1"]}
    assert summary["seed"] == 0 and summary["rounds"] == 2


def test_bad_config_is_refused_before_any_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    work = tmp_path / "sw"
    base = ["--config", "configs/default.py", "--workdir", str(work), "--seeds", "0-1"]
    cases = [
        (["--config.distill.lrr=1"], "Unknown config key 'distill.lrr'"),
        (["--variant", "a:", "--variant", "b:synth.l_tar=-1"], "Variant 'b'"),
        (["--variant", "a:synth.l_tar=x"], "could not convert"),
    ]
    for extra, message in cases:
        assert sweep.main([*base, *extra]) == 2
        assert message in capsys.readouterr().err
    assert sweep.main(["--config", "configs/nope.py", "--workdir", str(work)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not work.exists()  # no run started, no sweep.md with n = 0


def test_report_has_holm_and_power():
    a = {s: 70.0 + s for s in range(6)}
    gain_b = [0.9, 1.1, 1.0, 1.2, 0.8, 1.0]  # clearly ahead
    gain_c = [0.5, -0.5, 0.3, -0.2, 0.1, -0.3]  # level
    results = {"a": a}
    for name, gain in (("b", gain_b), ("c", gain_c)):
        results[name] = {s: a[s] + g for s, g in enumerate(gain)}
    rows = sweep.summarize(results, "a")
    b, c = rows[1]["paired"], rows[2]["paired"]
    p_b, p_c = stats_lib.paired_p(gain_b), stats_lib.paired_p(gain_c)
    assert b["p"] == pytest.approx(p_b) and c["p"] == pytest.approx(p_c) and p_b < p_c
    # Holm over 2 comparisons: the smaller p times 2, the larger times 1 (never below it).
    assert b["p_holm"] == pytest.approx(2 * p_b) and c["p_holm"] == pytest.approx(max(2 * p_b, p_c))
    mde = stats_lib.min_detectable_effect(np.std(gain_b, ddof=1), 6)
    assert b["mde80"] == pytest.approx(mde) and b["sd"] == pytest.approx(np.std(gain_b, ddof=1))
    md = sweep.markdown(rows, "a", "student.top1", "# t")
    assert "| p | Holm | MDE |" in md and f"| {2 * p_b:.3f} | {mde:.2f} |" in md
