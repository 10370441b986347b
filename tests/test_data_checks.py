"""Real data against the config before any work (stars_jax.data_checks, the teacher cache)."""

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from stars_jax import data, data_checks, teacher
from stars_jax.config import load_config_file
from stars_jax.errors import InputError
from tests.test_train import TINY


def _folder(root, classes, n_train=6, n_test=2, empty_test=()):
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(0 if (split == "test" and c in empty_test) else n):
                img = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
                Image.fromarray(img).save(d / f"{i}.png")
    return root


def _config(root, tmp_path, **teacher):
    c = load_config_file(TINY, str(root))
    c.teacher.cache_dir = str(tmp_path / "cache")
    for k, v in teacher.items():
        c.teacher[k] = v
    return c


def _splits(c):
    return data.load_split(c.data, "train"), data.load_split(c.data, "test")


def test_more_class_folders_than_num_classes_is_refused_before_training(tmp_path):
    c = _config(_folder(tmp_path / "d", ["a", "b", "c", "d", "e"]), tmp_path)  # num_classes 4
    out = tmp_path / "t"
    with pytest.raises(InputError, match=r"has 5 classes \(a, b, c, d, e\).*num_classes=5"):
        teacher.train_teacher(c, *_splits(c), out)
    assert not out.exists()


def test_too_few_images_for_a_batch_is_refused(tmp_path):
    c = _config(_folder(tmp_path / "d", ["a", "b", "c", "d"], n_train=3), tmp_path)  # 12 < 16
    with pytest.raises(InputError, match="12 images, fewer than one batch.*train_batch_size"):
        teacher.train_teacher(c, *_splits(c), tmp_path / "t")


def test_a_non_finite_loss_is_never_cached(tmp_path, monkeypatch):
    c = _config(_folder(tmp_path / "d", ["a", "b", "c", "d"]), tmp_path, train_batch_size=8)
    real = teacher._train_step
    monkeypatch.setattr(
        teacher, "_train_step", lambda *a: (real(*a)[0], jnp.float32(jnp.nan))
    )  # a diverged step
    out = teacher.cached_teacher_dir(c)
    with pytest.raises(InputError, match="loss became nan.*nothing was saved"):
        teacher.resolve_teacher(c, lambda: _splits(c))
    assert not out.exists()


def test_the_teacher_cache_is_keyed_on_the_data(tmp_path):
    a = _config(_folder(tmp_path / "a", ["x", "y", "z", "w"]), tmp_path)
    b = _config(_folder(tmp_path / "b", ["p", "q", "r", "s"]), tmp_path)  # same data.name
    assert a.data.name == b.data.name
    assert teacher.cached_teacher_dir(a) != teacher.cached_teacher_dir(b)
    assert teacher.cached_teacher_dir(a) == teacher.cached_teacher_dir(
        _config(tmp_path / "a", tmp_path)
    )
    before = teacher.cached_teacher_dir(a)
    (tmp_path / "a" / "train" / "x" / "extra.png").write_bytes(b"")  # another file: another key
    assert teacher.cached_teacher_dir(a) != before


def test_an_empty_class_folder_is_warned_about(tmp_path, capsys):
    c = _config(_folder(tmp_path / "d", ["a", "b", "c", "d"], empty_test=("c",)), tmp_path)
    from stars_jax.data_checks import check_classes

    check_classes(data.load_split(c.data, "test"), 4, "tiny test split")
    assert "no images of 1 of its 4 classes (c)" in capsys.readouterr().out


def test_a_teacher_near_chance_on_the_data_is_warned_about():
    """Under twice chance (10 classes: 20 %) the warning names the score and what to check."""
    assert data_checks.teacher_accuracy_warning(85.0, 10, 1000) is None
    assert data_checks.teacher_accuracy_warning(20.0, 10, 1000) is None
    note = data_checks.teacher_accuracy_warning(9.7, 10, 1000)
    assert "9.70% on these 1000 test images" in note and "10.0% for 10 classes" in note
    assert "class order" in note
    assert data_checks.teacher_accuracy_warning(40.0, 100, 50) is None  # 100 classes: 2 %
