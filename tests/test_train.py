"""The main job end to end on a tiny fake dataset: outputs, resume after SIGKILL, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stars_jax import train
from stars_jax.config import load_config_file
from stars_jax.data import load_dataset
from stars_jax.evaluate import evaluate
from stars_jax.evaluate import main as evaluate_cli
from stars_jax.model_dir import load_model_dir
from stars_jax.teacher import cached_teacher_dir

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.py"


def make_tiny_data(root):
    """An image folder with 4 easy classes (colour-coded 16x16 images)."""
    root = Path(root)
    rng = np.random.default_rng(0)
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]
    for split, n in (("train", 24), ("test", 8)):
        for c, colour in enumerate(colours):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                img = np.clip(np.array(colour) + rng.normal(0, 30, (16, 16, 3)), 0, 255)
                Image.fromarray(img.astype(np.uint8)).save(d / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_data(tmp_path_factory.mktemp("tinydata"))


def _config(data, cache, **over):
    c = load_config_file(TINY, str(data))
    c.teacher.cache_dir = str(cache)
    for key, value in over.items():
        *path, name = key.split(".")
        node = c
        for p in path:
            node = node[p]
        setattr(node, name, value)
    return c


def _cli(data, cache, workdir, *extra):
    return [
        sys.executable,
        "-m",
        "stars_jax.main",
        f"--config={TINY}:{data}",
        f"--workdir={workdir}",
        f"--config.teacher.cache_dir={cache}",
        *extra,
    ]


def _last_metrics(workdir):
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    last = json.loads(lines[-1])
    # Wall times ("time" and the "time/*" breakdown) differ between runs; the rest must not.
    return {k: v for k, v in last.items() if k != "time" and not k.startswith("time/")}


def test_end_to_end_resume_after_sigkill_and_nan(tiny_data, tmp_path):
    cache = tmp_path / "cache"
    # 1. Uninterrupted reference run (in process). It also trains and caches the teacher.
    ref_dir = tmp_path / "ref"
    # With the student's weight average on: it is checkpointed, so a resume must restore it.
    ema = {"distill.ema_decay": 0.5}
    summary = train.train_and_evaluate(
        _config(tiny_data, cache, **{"distill.rounds": 6}, **ema), ref_dir
    )
    for name in ("config.json", "metrics.jsonl", "summary.json", "student/model.json"):
        assert (ref_dir / name).exists(), name
    # Grids at the end of the synthesis-only warm-up (1 round) and at every evaluation.
    assert sorted(p.name for p in (ref_dir / "images").iterdir()) == [
        "round_0001.png",
        "round_0002.png",
        "round_0004.png",
        "round_0006.png",
    ]
    logged = [json.loads(x) for x in (ref_dir / "metrics.jsonl").read_text().splitlines()]
    assert not any(k.startswith("kd/") for k in logged[0]) and "synth/adv" not in logged[0]
    assert "kd/loss" in logged[1] and "synth/adv" in logged[1]  # the student after warm-up
    assert summary["kd_steps"] == 5 * 2  # 6 rounds, 1 of warm-up, 2 KD steps each
    health = summary["synthesis"]
    assert health["warmup_rounds"] == 1 and set(health["real_batch"]) == {
        "teacher_acc",
        "class_entropy",
        "diversity",
    }
    assert 0 <= health["teacher_acc"] <= 1 and 0 <= health["bank_entropy"] <= np.log(4) + 1e-6
    assert 0.0 <= summary["student"]["top1"] <= 100.0 and summary["student"]["firing_rates"]
    assert summary["student_ema"]["decay"] == 0.5 and 0 <= summary["student_ema"]["top1"] <= 100
    assert "eval/ema_top1" in logged[-1] and "eval/ema_top1" not in logged[-2]
    # Every 5th round (log.grad_ratio_every), each term's pull on the images against BN's.
    ratios = {k.rsplit("/", 1)[1]: v for k, v in logged[4].items() if "grad_ratio" in k}
    assert set(ratios) == {"bn", "ce", "adv", "rca", "tar"} and ratios["bn"] == 1.0, ratios
    assert all(np.isfinite(v) and v > 0 for v in ratios.values())
    assert not any("grad_ratio" in k for row in logged[:4] + logged[5:] for k in row)
    assert summary["teacher"]["top1"] > 50.0  # the cached teacher learned the colours
    student = load_model_dir(ref_dir / "student")
    assert student.meta["kind"] == "student" and student.meta["time_steps"] == 2
    # The saved student and the teacher, evaluated by the evaluate CLI at another batch size
    # (other padding), score what the run said: one evaluation path.
    test = load_dataset("image_folder", str(tiny_data), "test")
    result = evaluate(student.logits, student.variables, test.images, test.labels, batch_size=10)
    assert result["top1"] == pytest.approx(summary["student"]["top1"])
    teacher_dir = cached_teacher_dir(_config(tiny_data, cache))
    for model_dir, want in (
        (ref_dir / "student", summary["student"]),
        (teacher_dir, summary["teacher"]),
    ):
        args = ["--model", str(model_dir), "--data_dir", str(tiny_data), "--batch_size", "12"]
        assert evaluate_cli(args)["top1"] == pytest.approx(want["top1"])
    # The CLI's energy report on the student, against its teacher's MACs.
    args = ["--model", str(ref_dir / "student"), "--data_dir", str(tiny_data)]
    report = evaluate_cli([*args, "--teacher", str(teacher_dir)])["energy"]
    assert report["student"]["acs"] > 0 and report["teacher"]["macs"] > 0
    rounds = [json.loads(x)["round"] for x in (ref_dir / "metrics.jsonl").read_text().splitlines()]
    assert rounds == list(range(6))

    # 2. The same run, killed with SIGKILL after its first checkpoint, then rerun.
    run_dir = tmp_path / "killed"
    cmd = _cli(
        tiny_data, cache, run_dir, "--config.distill.rounds=6", "--config.distill.ema_decay=0.5"
    )
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    # (Killed once the checkpoint's run state is written too, i.e. after the whole save.)
    while not (run_dir / "checkpoints" / "1" / "run_state.json").exists() and proc.poll() is None:
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "summary.json").exists(), "the run finished before it was killed"
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Resuming" in out.stdout
    # Rounds logged after the checkpoint by the killed run are dropped, not duplicated.
    rounds = [json.loads(x)["round"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rounds == list(range(6))
    ref, resumed = _last_metrics(ref_dir), _last_metrics(run_dir)
    assert ref.keys() == resumed.keys()
    for k in ref:
        np.testing.assert_allclose(resumed[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)
    # The summary covers the whole run, not its last segment: the health means equal the
    # uninterrupted run's, and the time breakdown sums every logged round's seconds.
    done = json.loads((run_dir / "summary.json").read_text())
    for key, value in summary["synthesis"].items():
        if key != "real_batch":
            assert done["synthesis"][key] == pytest.approx(value, rel=1e-5), key
    logged = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    spent = done["time_breakdown"]
    rounds_s = sum(row["time/round_s"] for row in logged)
    assert spent["synthesis_s"] + spent["kd_s"] == pytest.approx(rounds_s, abs=0.05)
    # A rerun of the finished run leaves its summary as it was, and says so.
    before = (run_dir / "summary.json").read_bytes()
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "finished earlier" in again.stdout, again.stderr[-2000:]
    assert (run_dir / "summary.json").read_bytes() == before

    # 3. NaN in a loss stops with the round and term named; the last checkpoint stays.
    # (A NaN weight is now refused up front by validation; 1e39 passes it as a finite Python
    # float but overflows to inf in the float32 loss.)
    bad = _config(tiny_data, cache, **{"distill.rounds": 8, "synth.fast.a_adv": 1e39}, **ema)
    with pytest.raises(FloatingPointError, match=r"synth/loss.*in round 7.*5.diverged.*round 4"):
        # The weight differs from the run's: allowed explicitly (the run fingerprint).
        train.train_and_evaluate(bad, ref_dir, allow_config_change=("synth.fast.a_adv",))
    # The round before the NaN may have trained it into the weights: its checkpoint is set
    # aside (kept), and a rerun resumes from the one before.
    assert (ref_dir / "checkpoints" / "5.diverged").is_dir()
    assert (ref_dir / "checkpoints" / "3").is_dir()


def test_stars_terms_start_at_their_round(tiny_data, tmp_path):
    """Rounds between the warm-up and synth.stars_start_round run the baseline (no STARS term
    in synthesis or KD); from it on, all three act, until synth.tar_stop_round turns TAR off
    (RCA goes on)."""
    over = {"distill.rounds": 4, "synth.stars_start_round": 2, "distill.eval_every": 4}
    over["synth.tar_stop_round"] = 3
    train.train_and_evaluate(_config(tiny_data, tmp_path / "cache", **over), tmp_path / "w")
    rows = [json.loads(x) for x in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    stars_keys = {"synth/rca", "synth/tar", "kd/rca"}
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    assert "kd/loss" in rows[1] and "synth/adv" in rows[1]  # a student round, baseline terms
    assert not stars_keys & rows[1].keys() and stars_keys <= rows[2].keys()
    assert "synth/tar" not in rows[3] and {"synth/rca", "kd/rca"} <= rows[3].keys()


def test_unknown_config_key_is_an_error(tiny_data, tmp_path):
    out = subprocess.run(
        _cli(tiny_data, tmp_path, tmp_path / "w", "--config.distill.no_such_key=1"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode != 0 and "no_such_key" in out.stderr


def test_bad_inputs_get_clear_errors(tiny_data, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(FileNotFoundError, match="data.path"):
        train.train_and_evaluate(_config(tmp_path / "missing", cache), tmp_path / "w1")
    with pytest.raises(ValueError, match="student.arch=.resnet50.: must be one of"):
        train.train_and_evaluate(
            _config(tiny_data, cache, **{"student.arch": "resnet50"}), tmp_path / "w2"
        )
    # A teacher directory of another arch than the config names.
    summary_dir = tmp_path / "w3"
    train.train_and_evaluate(_config(tiny_data, cache, **{"distill.rounds": 1}), summary_dir)
    teacher_dir = next(cache.iterdir())
    wrong = _config(tiny_data, cache, **{"teacher.dir": str(teacher_dir), "teacher.arch": "vgg11"})
    with pytest.raises(ValueError, match="vgg11"):
        train.train_and_evaluate(wrong, tmp_path / "w4")
    missing = _config(tiny_data, cache, **{"teacher.dir": str(tmp_path / "nope")})
    with pytest.raises(FileNotFoundError, match="nope"):
        train.train_and_evaluate(missing, tmp_path / "w5")
