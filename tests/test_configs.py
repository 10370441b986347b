"""Every config file loads, names only keys the base config defines, and uses known names."""

from pathlib import Path

import pytest
from flax import traverse_util

from stars_jax import data, neurons
from stars_jax.config import (
    FAST_TEACHER_WEIGHTS,
    MEASURED_SYNTH,
    REFERENCE_SYNTH,
    base_config,
    load_config_file,
    parse_arg,
    set_method,
)
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


@pytest.mark.parametrize("method", sorted(SYNTHESIZERS))
@pytest.mark.parametrize("name", ["cifar10.py", "default.py"])
def test_every_synthesizer_has_reference_settings(name, method):
    path = CONFIGS[0].parent / name
    c = load_config_file(path, method)
    assert c.synth.method == method and _keys(c) == _keys(base_config())
    want = {**REFERENCE_SYNTH[method], **MEASURED_SYNTH.get(method, {})}
    if method == "fast" and c.teacher.arch in FAST_TEACHER_WEIGHTS:  # weights follow the teacher
        want["a_bn"], want["a_oh"], want["a_adv"] = FAST_TEACHER_WEIGHTS[c.teacher.arch]
    for key, value in want.items():
        if key not in ("warmup_rounds", "generator_width"):  # CPU scale in default.py
            assert c.synth[key] == value, key
    ref = set_method(base_config(), method, reference=True)
    for key, value in REFERENCE_SYNTH[method].items():
        assert ref.synth[key] == value, key


def test_fast_weights_follow_the_teacher():
    for teacher, (a_bn, a_oh, a_adv) in FAST_TEACHER_WEIGHTS.items():
        if teacher == "vgg11":
            continue  # no CIFAR-10 vgg11 teacher row in configs/cifar10.py
        c = load_config_file(CONFIGS[0].parent / "cifar10.py", f"fast,{teacher}")
        assert (c.synth.a_bn, c.synth.a_oh, c.synth.a_adv) == (a_bn, a_oh, a_adv)
        assert c.teacher.arch == teacher
    with pytest.raises(ValueError, match="valid"):
        load_config_file(CONFIGS[0].parent / "cifar10.py", "fast,resnet50")
    with pytest.raises(ValueError, match="valid"):
        set_method(base_config(), "gan")


def test_parse_arg():
    assert parse_arg(None, "fast") == ("fast", None)
    assert parse_arg("nayer", "fast") == ("nayer", None)
    assert parse_arg("nayer,wrn40_2", "fast") == ("nayer", "wrn40_2")
    assert parse_arg(",wrn40_2", "fast") == ("fast", "wrn40_2")
