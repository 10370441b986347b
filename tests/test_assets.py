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


CIFAR = "cifar10_resnet14"


def test_the_cifar10_cpu_config_distills_from_the_shipped_cifar10_teacher():
    from configs.cifar10_cpu import get_config as cifar_config

    c = cifar_config()
    assert Path(c.teacher.dir) == assets.ROOT / "teachers" / CIFAR
    meta = load_model_dir(c.teacher.dir).meta
    check_model_dir(meta, arch=c.teacher.arch, num_classes=c.data.num_classes)
    assert tuple(meta["input_shape"]) == (32, 32, 3) and meta["trained_on"] == "cifar10"
    # Trained without the validation part the config holds out (the same draw).
    held = meta["training"]["val_holdout"]
    assert (held["per_class"], held["seed"]) == (c.data.val_per_class, c.data.val_seed)


def test_the_shipped_cifar10_teacher_scores_its_recorded_top1():
    from configs.cifar10_cpu import get_config as cifar_config

    c = cifar_config()
    root = Path(__file__).resolve().parents[1]
    c.data.path = str((root / c.data.path).resolve())
    if not Path(c.data.path).is_dir():
        pytest.skip(f"the CIFAR-10 JPEG copy is not at {c.data.path} (../shared/data)")
    teacher = load_model_dir(c.teacher.dir)
    test = data.load_split(c.data, c.data.test_split)
    result = evaluate(teacher.logits, teacher.variables, test.images, test.labels, 500)
    assert result["n"] == 10000
    assert result["top1"] == pytest.approx(teacher.meta["training"]["test_top1"], abs=0.011)
