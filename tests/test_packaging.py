"""What a plain (non-editable) install relies on: the installed configs, ``python -m stars_jax``."""

import subprocess
import sys

from stars_jax import cli


def test_config_falls_back_to_the_installed_copy(tmp_path, monkeypatch):
    installed = tmp_path / "share" / "stars_jax" / "configs"
    installed.mkdir(parents=True)
    (installed / "default.py").write_text("")
    monkeypatch.setattr(cli, "installed_configs", lambda: installed)
    monkeypatch.chdir(tmp_path)  # no configs/ here, as after `pip install .`
    argv = ["prog", "--config=configs/default.py:arg", "--config", "default.py", "--x=1"]
    assert cli.with_installed_configs(argv) == [
        "prog",
        f"--config={installed / 'default.py'}:arg",
        "--config",
        str(installed / "default.py"),
        "--x=1",
    ]
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "default.py").write_text("")  # a checkout's own file wins
    assert cli.with_installed_configs(["--config=configs/default.py"]) == [
        "--config=configs/default.py"
    ]
    assert cli.with_installed_configs(["--config=missing.py"]) == ["--config=missing.py"]


def test_python_m_stars_jax_lists_the_tools():
    out = subprocess.run(
        [sys.executable, "-m", "stars_jax"], capture_output=True, text=True, check=True
    ).stdout
    for tool in ("main", "convert", "teacher", "evaluate", "export", "export_bank", "sweep"):
        assert f"python -m stars_jax.{tool} " in out
