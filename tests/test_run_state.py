"""The divergence guard (stars_jax.run_state), and its advice followed as written."""

import re
import subprocess

import pytest

from stars_jax import run_state
from stars_jax.errors import DivergedError
from tests.test_train import ROOT, _cli


def test_a_loss_that_explodes_past_its_first_round_stops_the_run():
    ref = {}
    run_state.check_divergence(ref, {"kd/loss": 0.008, "synth/loss": 140.0}, 1)
    assert ref == {"kd/loss": 0.008, "synth/loss": 140.0}  # the first student round's
    run_state.check_divergence(ref, {"kd/loss": 999.0, "synth/loss": 139_000.0}, 2)  # below
    with pytest.raises(DivergedError, match="kd/loss diverged in round 8: 1.2e\\+06") as err:
        run_state.check_divergence(ref, {"kd/loss": 1.2e6}, 7)  # 1000 x max(0.008, 1) = 1000
    assert err.value.keys == ("kd/loss",)
    with pytest.raises(DivergedError, match="synth/loss"):  # either sign
        run_state.check_divergence(ref, {"synth/loss": -2.5e6}, 7)


def test_divergence_is_one_paragraph_and_its_advice_resumes(tmp_path):
    from tests.test_train import make_tiny_data

    data, cache, w = make_tiny_data(tmp_path / "data"), tmp_path / "cache", tmp_path / "w"
    base = _cli(data, cache, w, "--config.distill.rounds=4", "--config.ckpt.every=1")
    run = lambda *extra: subprocess.run(
        [*base, *extra], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    out = run("--config.distill.lr=1e6")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "kd/loss diverged in round 3" in out.stderr and "1.diverged" in out.stderr
    flags = re.search(r"rerun the same command with (--config\S+) (--allow\S+)", out.stderr)
    assert flags and flags.group(2) == "--allow_config_change=distill.lr", out.stderr
    # As written (only a learning rate that trains, here), it resumes from round 1's.
    done = run("--config.distill.lr=0.001", flags.group(2))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Resuming from the checkpoint after round 1" in done.stdout
