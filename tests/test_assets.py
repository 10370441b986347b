"""The teacher shipped with the package for the embedded default (stars_jax/assets)."""

from pathlib import Path

import pytest

from configs.default import get_config
from stars_jax import assets, data
from stars_jax.accuracy import evaluate
from stars_jax.model_dir import check_model_dir, load_model_dir
from stars_jax.teacher import cached_teacher_dir

NAME = "fashion_mnist_resnet_small"


def test_the_default_distills_from_the_shipped_teacher():
    c = get_config()
    assert Path(c.teacher.dir) == assets.ROOT / "teachers" / NAME
    meta = load_model_dir(c.teacher.dir).meta
    check_model_dir(meta, arch=c.teacher.arch, num_classes=c.data.num_classes)
    assert meta["kind"] == "teacher" and tuple(meta["input_shape"]) == (28, 28, 1)
    # `--config.teacher.dir=` trains this very teacher (same epochs and seed) into the cache.
    assert (meta["trained_on"], meta["epochs"], meta["seed"]) == (
        c.data.name,
        c.teacher.train_epochs,
        c.seed,
    )
    assert cached_teacher_dir(c).name.startswith(f"{NAME}_e{meta['epochs']}_s{meta['seed']}_")


def test_an_unknown_shipped_teacher_names_the_shipped_ones():
    with pytest.raises(FileNotFoundError, match=NAME):
        assets.teacher_dir("cifar10_resnet_small")


def test_the_shipped_teacher_scores_what_the_docs_say():
    c = get_config()
    if not Path(c.data.path).is_dir():
        pytest.skip(
            f"Fashion-MNIST not installed at {c.data.path} (apt-get install dataset-fashion-mnist)"
        )
    test = data.load_split(c.data, c.data.test_split)
    teacher = load_model_dir(c.teacher.dir)
    result = evaluate(teacher.logits, teacher.variables, test.images, test.labels, 500)
    assert result["n"] == 10000 and round(result["top1"], 2) == 86.45
