"""stars_jax.checkpoint: a damaged newest checkpoint falls back to the newest readable one."""

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from stars_jax import checkpoint
from stars_jax.errors import InputError


def _tree(scale):
    return {"a": jnp.arange(16.0) * scale, "b": {"c": jnp.ones((3, 3)) * scale}}


def _saved(directory, steps):
    manager = checkpoint.make_manager(directory, keep=3)
    for step in steps:
        checkpoint.save(manager, step, _tree(step))
    return manager


def _damage(step_dir: Path):
    """Truncates every data file of one step, as a disk error or a bad copy would."""
    for f in step_dir.rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[:20])


def test_a_damaged_newest_checkpoint_falls_back_and_is_set_aside(tmp_path, capsys):
    _saved(tmp_path, (1, 3))
    _damage(tmp_path / "3")
    manager = checkpoint.make_manager(tmp_path, keep=3)  # as a resumed run opens it
    step, tree = checkpoint.restore_latest(manager, _tree(0))
    assert step == 1
    np.testing.assert_array_equal(tree["a"], np.arange(16.0))
    out = capsys.readouterr().out
    assert "cannot be read" in out and "3.unreadable" in out and "from round 2's" in out
    assert (tmp_path / "3.unreadable").is_dir() and not (tmp_path / "3").exists()
    checkpoint.save(manager, 3, _tree(3))  # the resumed run can write that step again
    assert checkpoint.restore_latest(checkpoint.make_manager(tmp_path), _tree(0))[0] == 3


def test_no_readable_checkpoint_says_which_directory_to_remove(tmp_path):
    _saved(tmp_path, (1,))
    _damage(tmp_path / "1")
    with pytest.raises(InputError, match=r"Cannot restore .* none can be read(.|\n)*delete") as err:
        checkpoint.restore_latest(checkpoint.make_manager(tmp_path), _tree(0))
    assert "tensorstore_spec" not in str(err.value) and len(str(err.value)) < 800
    assert checkpoint.restore_latest(checkpoint.make_manager(tmp_path / "new"), _tree(0)) is None
