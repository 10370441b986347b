"""Every config file loads, names only keys the base config defines, and uses known names."""

from pathlib import Path

import pytest
from flax import traverse_util

from stars_jax import data, neurons
from stars_jax.config import base_config, load_config_file
from stars_jax.distill import DTYPES, lif_params
from stars_jax.models.students import STUDENTS
from stars_jax.models.teachers import TEACHERS
from stars_jax.synthesis import SYNTHESIZERS

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.py"))


def _keys(c):
    return set(traverse_util.flatten_dict(c.to_dict()))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_is_valid(path):
    c = load_config_file(path)
    assert _keys(c) == _keys(base_config()), "a config added or dropped a key (typo?)"
    assert c.teacher.arch in TEACHERS and c.student.arch in STUDENTS
    assert c.synth.method in SYNTHESIZERS and c.student.dtype in DTYPES
    assert c.data.kind in {"auto", *data.LOADERS}
    assert isinstance(lif_params(c.neuron), neurons.LIFParams)
    assert c.distill.batch_size % 8 == 0 or "tiny" in path.name  # fits 8-device meshes
    assert path.read_text().count("Command") or path.read_text().count("python -m")


def test_locked_config_rejects_unknown_keys():
    c = base_config()
    c.lock()
    with pytest.raises(AttributeError):
        c.distill.kd_step = 3
