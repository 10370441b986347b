"""A workdir that cannot be corrupted, and inputs checked before any work (issue 12)."""

import errno
import json
import os
import signal
import subprocess
import sys

import pytest

from stars_jax import checkpoint, errors, train, validate
from stars_jax import workdir as workdir_lib
from stars_jax.config import base_config, load_config_file
from tests.test_train import ROOT, _cli, _config, make_tiny_data


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_data(tmp_path_factory.mktemp("workdirdata"))


# --- validation ---------------------------------------------------------------------------


def test_every_key_of_every_config_has_a_rule_and_the_defaults_pass():
    for path in sorted((ROOT / "configs").glob("*.py")):
        config = load_config_file(path, "/tmp/images" if path.stem == "tiny" else None)
        assert validate.problems(config) == [], path.name


@pytest.mark.parametrize(
    "key,value,words",
    [
        ("distill.lr", -1.0, "distill.lr=-1.0: must be a finite number > 0"),
        ("synth.batch_size", 0, "synth.batch_size=0: must be an integer >= 1"),
        ("distill.eval_every", 0, "distill.eval_every=0: must be an integer >= 1"),
        ("ckpt.every", 0, "ckpt.every=0: must be an integer >= 1"),
        ("synth.method", "gan", "synth.method='gan': must be one of 'deepinversion'"),
        ("neuron.v_threshold", float("nan"), "neuron.v_threshold=nan: must be a finite"),
        ("synth.cmi.bn_ema", 1.0, "synth.cmi.bn_ema=1.0: must be a finite number >= 0 and < 1"),
        ("mesh.data", 0, "mesh.data=0: must be an integer >= 1 (or -1)"),
        ("synth.tar_k", (), "synth.tar_k=(): must be a non-empty tuple"),
        ("synth.rca_sign", 0.5, "synth.rca_sign=0.5: must be one of -1.0, 1.0"),
    ],
)
def test_bad_values_name_the_key_the_value_and_the_range(key, value, words):
    c = base_config()
    *path, name = key.split(".")
    node = c
    for p in path:
        node = node[p]
    with c.unlocked():
        node[name] = value
    with pytest.raises(errors.ConfigError) as err:
        validate.check_config(c)
    assert words in str(err.value), str(err.value)
    assert isinstance(err.value, ValueError)  # callers catching ValueError still do


def test_all_bad_values_are_listed_at_once_and_cross_checks():
    c = base_config()
    c.distill.lr, c.synth.nayer.steps = -1.0, 0
    assert len(validate.problems(c)) == 2
    c = base_config()
    c.distill.lr_min = 1.0
    assert validate.problems(c) == ["distill.lr_min=1.0: must be <= distill.lr (0.005)"]


def test_unknown_key_names_the_nearest_valid_ones():
    msg = validate.unknown_key_message("distill.lrr", base_config())
    assert "'distill.lrr'" in msg and "distill.lr" in msg


def test_cli_bad_key_and_value_print_one_paragraph_without_traceback(tiny_data, tmp_path):
    for extra, words in (
        ("--config.distill.no_such_key=1", "Unknown config key 'distill.no_such_key'"),
        ("--config.distill.lr=-1", "distill.lr=-1.0: must be a finite number > 0"),
    ):
        out = subprocess.run(
            _cli(tiny_data, tmp_path, tmp_path / "w", extra),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 2 and words in out.stderr, out.stderr
        assert "Traceback" not in out.stderr and len(out.stderr.splitlines()) <= 5, out.stderr
    assert not (tmp_path / "w").exists()  # nothing was written for a config that is invalid


# --- the workdir lock ---------------------------------------------------------------------


def test_lock_refuses_a_second_job_and_takes_over_a_stale_lock(tmp_path):
    with workdir_lib.lock(tmp_path):
        holder = json.loads((tmp_path / ".lock").read_text())
        assert holder["pid"] > 0 and holder["host"]
        with (
            pytest.raises(errors.WorkdirError, match="in use by process"),
            workdir_lib.lock(tmp_path),
        ):
            pass
    assert not (tmp_path / ".lock").exists()  # released
    # A lock left by a process that no longer runs (killed -9, crashed) is stale.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = {"host": holder["host"], "pid": dead.pid, "since": 0}
    (tmp_path / ".lock").write_text(json.dumps(stale))
    with workdir_lib.lock(tmp_path):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] != dead.pid


def test_an_empty_or_unreadable_lock_is_stale(tmp_path, capsys):
    for content in ("", "{not json", "[]"):  # a writer that died mid-write, or garbage
        (tmp_path / ".lock").write_text(content)
        with workdir_lib.lock(tmp_path):
            assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
        assert "Removing a stale lock (empty)" in capsys.readouterr().out


def test_a_full_disk_at_start_is_one_error_and_leaves_no_lock(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(workdir_lib.json, "dump", full)  # the lock's write fails
    with pytest.raises(errors.DiskFullError, match="No space left.*rerun the same command"):
        with workdir_lib.lock(tmp_path):
            pass
    assert not (tmp_path / ".lock").exists()  # so the next run is not refused


def test_a_full_disk_anywhere_is_one_paragraph_with_exit_2(capsys):
    def write():
        raise OSError(errno.ENOSPC, "No space left on device", "/w/config.json")

    with pytest.raises(SystemExit) as done:
        errors.report_user_errors(write, debug=False)
    err = capsys.readouterr().err
    assert done.value.code == 2 and "/w/config.json" in err and "Traceback" not in err


SIGTERM_SCRIPT = """
import sys, time
from stars_jax import errors

def run():
    try:
        print("ready", flush=True)
        time.sleep(60)
    except KeyboardInterrupt:  # as the round loop does
        raise errors.Interrupted("Interrupted in round 3; rerun the same command to resume.")

errors.report_user_errors(run, debug=False)
"""


def test_sigterm_stops_like_ctrl_c_with_the_resume_message():
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGTERM_SCRIPT],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "rerun the same command to resume" in err and "Traceback" not in err


# --- the run fingerprint ------------------------------------------------------------------


def test_fingerprint_leaves_out_safe_keys_and_lists_differences():
    a, b = base_config(), base_config()
    b.distill.time_budget_s, b.log.every = 60.0, 7  # safe: budget and logging
    assert workdir_lib.fingerprint(a) == workdir_lib.fingerprint(b)
    b.seed, b.synth.l_tar = 1, 1000.0
    diff = workdir_lib.differences(workdir_lib.fingerprint(a), workdir_lib.fingerprint(b))
    assert diff == {"seed": (0, 1), "synth.l_tar": (1.0, 1000.0)}


def test_keys_of_another_version_do_not_stop_a_resume(tmp_path):
    """A key that only the stored fingerprint or only the current config has (stars_jax was
    upgraded between the runs) is not a difference; a changed shared key still is."""
    config = base_config()
    (tmp_path / "checkpoints" / "3").mkdir(parents=True)
    old = workdir_lib.fingerprint(config)
    del old["neuron.kernel"]  # a key this version added
    old["synth.removed_key"] = 1
    (tmp_path / workdir_lib.FINGERPRINT).write_text(json.dumps(old))
    workdir_lib.check_fingerprint(tmp_path, config)  # no error
    config.seed = 5
    with pytest.raises(errors.WorkdirError, match="seed: 0 in the run, 5 now"):
        workdir_lib.check_fingerprint(tmp_path, config)


def _flat_layout(fp: dict) -> dict:
    """Today's fingerprint as stars_jax wrote it before the per-method synth sections."""
    method, old = fp["synth.method"], {"layers": "cmi_layers", "bank_size": "cmi_bank_size"}
    old.update(negatives="cmi_negatives", head_dim="cmi_head_dim")
    out = {"synth.jitter": 2, "synth.embed": "fixed"}  # other methods' keys were stored too
    for key, value in fp.items():
        name = key.removeprefix(f"synth.{method}.")
        out[f"synth.{old.get(name, name)}" if name != key else key] = value
    return out


def test_a_fingerprint_of_the_flat_synth_layout_resumes_and_still_refuses(tmp_path):
    config = load_config_file(ROOT / "configs" / "tiny.py", "")
    config.synth.method = "cmi"
    (tmp_path / "checkpoints" / "3").mkdir(parents=True)
    old = _flat_layout(workdir_lib.fingerprint(config))
    assert "synth.cmi_bank_size" in old and "synth.steps" in old
    (tmp_path / workdir_lib.FINGERPRINT).write_text(json.dumps(old))
    workdir_lib.check_fingerprint(tmp_path, config)  # the same run: resumes
    config.synth.nayer.steps = 99  # another method's section does not define the run
    workdir_lib.check_fingerprint(tmp_path, config)
    config.synth.cmi.bank_size = 64
    with pytest.raises(errors.WorkdirError) as err:
        workdir_lib.check_fingerprint(tmp_path, config)
    assert "synth.cmi.bank_size: 32 in the run, 64 now" in str(err.value)
    assert "flat synth layout" in str(err.value)
    assert "--allow_config_change=synth.cmi.bank_size" in str(err.value)


def test_a_rerun_with_another_config_stops_before_any_work(tiny_data, tmp_path):
    cache, w = tmp_path / "cache", tmp_path / "w"
    train.train_and_evaluate(_config(tiny_data, cache, **{"distill.rounds": 2}), w)
    config_json = (w / "config.json").read_text()
    # The seed defines the run: refused, listed, nothing written (config.json kept).
    other = _config(tiny_data, cache, **{"distill.rounds": 2})
    other.seed = 1
    with pytest.raises(errors.WorkdirError, match=r"seed: 0 in the run, 1 now") as err:
        train.train_and_evaluate(other, w)
    assert "--allow_config_change=seed" in str(err.value) and "another --workdir" in str(err.value)
    # A bad value fails validation: config.json is still the run's.
    with pytest.raises(errors.ConfigError):
        train.train_and_evaluate(_config(tiny_data, cache, **{"synth.batch_size": 0}), w)
    assert (w / "config.json").read_text() == config_json
    assert not (w / ".lock").exists()  # released after each failure
    # A shape-changing key allowed by the user still cannot restore: one clear error.
    bigger = _config(tiny_data, cache, **{"distill.rounds": 2, "distill.bank_size": 48})
    with pytest.raises(errors.InputError, match="Cannot restore the checkpoints"):
        train.train_and_evaluate(bigger, w, allow_config_change=("distill.bank_size",))
    assert (w / "config.json").read_text() == config_json
    # Safe keys may change: the run extends to 3 rounds, and the history keeps both starts.
    more = _config(tiny_data, cache, **{"distill.rounds": 3, "log.every": 2})
    more.energy.enabled = True  # reporting only: a safe key; the energy report is tested here
    summary = train.train_and_evaluate(more, w)
    assert summary["rounds"] == 3
    report = summary["energy"]
    assert report["student"]["acs"] > 0 and report["teacher"]["macs"] > 0
    assert set(report["student_layers"]) >= {"conv1", "fc"}
    assert list(w.glob("events.out.tfevents.*"))  # TensorBoard events beside metrics.jsonl
    history = [json.loads(x) for x in (w / "config_history.jsonl").read_text().splitlines()]
    assert [h["resumed_after_round"] for h in history] == [None, 2]
    assert json.loads((w / "config.json").read_text())["config"]["distill"]["rounds"] == 3


def test_ctrl_c_names_the_checkpoint_to_resume_from(tiny_data, tmp_path, monkeypatch):
    real_round = train.run_round

    def interrupted_in_round_3(steps, carry, teacher_vars, key, r, *args, **kwargs):
        if r == 2:
            raise KeyboardInterrupt
        return real_round(steps, carry, teacher_vars, key, r, *args, **kwargs)

    monkeypatch.setattr(train, "run_round", interrupted_in_round_3)
    c = _config(tiny_data, tmp_path / "cache", **{"distill.rounds": 4, "ckpt.every": 2})
    with pytest.raises(errors.Interrupted) as err:
        train.train_and_evaluate(c, tmp_path / "w")
    msg = str(err.value)
    assert "Interrupted in round 3 of 4" in msg and "after round 2" in msg
    assert "Rerun the same command to resume" in msg
    assert not (tmp_path / "w" / ".lock").exists()


def test_a_failed_checkpoint_write_is_one_clear_error(tmp_path):
    class FullDisk:
        directory = tmp_path / "checkpoints"

        def save(self, *args, **kwargs):
            raise OSError(28, "No space left on device")

    with pytest.raises(checkpoint.CheckpointWriteError) as err:
        checkpoint.save(FullDisk(), 4, {"x": 1})
    msg = str(err.value)
    assert "round 5" in msg and "No space left on device" in msg and "resume" in msg
    assert isinstance(err.value, errors.UserError)


def test_a_bucket_path_without_gcsfs_is_one_paragraph(capsys):
    def open_bucket():  # what etils raises for gs:// without gcsfs
        try:
            raise ModuleNotFoundError("No module named 'gcsfs'", name="gcsfs")
        except ModuleNotFoundError as missing:
            raise ImportError("Please install gcsfs to access Google Storage") from missing

    with pytest.raises(SystemExit) as done:
        errors.report_user_errors(open_bucket, debug=False)
    err = capsys.readouterr().err
    assert done.value.code == 2 and "pip install gcsfs" in err and "stars_jax[gcs]" in err
    with pytest.raises(ImportError):  # any other ImportError keeps its traceback
        errors.report_user_errors(lambda: __import__("no_such_module_here"), debug=False)
