"""``python -m stars_jax.validate`` as a user runs it, and a mistyped --config path in the
tools: one paragraph and a non-zero exit, never a traceback or a silent 0."""

import os
import subprocess
import sys
from pathlib import Path

from stars_jax import workdir as workdir_lib
from stars_jax.config import load_config_file

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = str(ROOT / "configs/default.py")


def _run(module, *args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    cmd = [sys.executable, "-m", f"stars_jax.{module}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def test_validate_says_ok_or_lists_every_problem():
    ok = _run("validate", f"--config={DEFAULT}")
    assert ok.returncode == 0 and ok.stdout.startswith("ok:"), ok.stderr
    bad = _run("validate", f"--config={DEFAULT}", "--config.distill.lr=-1", "--config.seed=-3")
    assert bad.returncode == 2 and "2 problem(s)" in bad.stderr
    assert "distill.lr=-1.0" in bad.stderr and "seed=-3" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_validate_checks_a_resume_against_the_workdir(tmp_path):
    # A workdir with checkpoints of the default run (a digit-named step directory).
    workdir_lib.record_start(tmp_path, load_config_file(DEFAULT), {}, None)
    (tmp_path / "checkpoints" / "9").mkdir(parents=True)
    same = _run("validate", f"--config={DEFAULT}", f"--workdir={tmp_path}")
    assert same.returncode == 0 and "may resume" in same.stdout, same.stderr
    other = _run("validate", f"--config={DEFAULT}", f"--workdir={tmp_path}", "--config.seed=5")
    assert other.returncode == 2 and "seed: 0 in the run, 5 now" in other.stderr
    allowed = [f"--config={DEFAULT}", f"--workdir={tmp_path}", "--config.seed=5"]
    assert _run("validate", *allowed, "--allow_config_change=seed").returncode == 0


def test_a_mistyped_config_path_is_one_paragraph():
    for module in ("main", "validate", "teacher"):
        extra = {"main": ["--workdir=/tmp/unused"], "teacher": ["--out=/tmp/unused"]}
        done = _run(module, "--config=configs/defualt.py", *extra.get(module, []))
        assert done.returncode == 2, (module, done.stderr)
        assert "'configs/defualt.py' does not exist" in done.stderr, module
        assert "Traceback" not in done.stderr, module
