"""Transfer sets: a run's bank exported as an image folder, and a student distilled from it."""

import jax
import numpy as np
import pytest
from PIL import Image

from stars_jax import errors, train
from stars_jax.apply import logits_fn
from stars_jax.export_bank import export_bank, read_bank
from stars_jax.export_bank import main as export_cli
from stars_jax.model_dir import load_model_dir
from stars_jax.teacher import cached_teacher_dir
from tests.test_train import _config, make_tiny_data


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_data(tmp_path_factory.mktemp("transferdata"))


def test_export_round_trip_and_distill_from_it(tiny_data, tmp_path):
    cache, w, out = tmp_path / "cache", tmp_path / "w", tmp_path / "set"
    config = _config(tiny_data, cache, **{"distill.rounds": 2})
    train.train_and_evaluate(config, w)
    bank = read_bank(w)
    assert len(bank["images"]) == 2 * config.synth.batch_size  # one kept batch a round
    export_cli(["--workdir", str(w), "--out", str(out)])
    # Every class has its folder (so folder order is label order), the pixels are the bank's.
    assert sorted(p.name for p in (out / "train").iterdir()) == ["000", "001", "002", "003"]
    saved = np.load(out / "soft_labels.npz")
    assert len(saved["files"]) == len(bank["images"])
    for i, rel in enumerate(saved["files"]):
        assert rel.split("/")[1] == f"{int(bank['labels'][i]):03d}"
        png = np.asarray(Image.open(out / rel))
        np.testing.assert_array_equal(png, bank["images"][i])
    np.testing.assert_array_equal(saved["labels"], bank["labels"])
    np.testing.assert_array_equal(saved["teacher_preds"], bank["preds"])
    # The soft labels are the run's teacher on those very images.
    teacher = load_model_dir(cached_teacher_dir(config))
    norm = teacher.meta["normalization"]
    want = logits_fn(teacher.model, "teacher", norm["mean"], norm["std"])(
        jax.device_put(teacher.variables), bank["images"]
    )
    np.testing.assert_allclose(saved["teacher_logits"], np.asarray(want), rtol=1e-5, atol=1e-5)
    assert np.array_equal(saved["teacher_logits"].argmax(-1), bank["preds"])
    # A second export into the same folder needs --overwrite.
    with pytest.raises(errors.InputError, match="not empty"):
        export_bank(w, out)
    # A new student distils from the set, with no synthesis.
    over = {"distill.rounds": 2, "distill.mode": "transfer_set", "distill.transfer_set": str(out)}
    summary = train.train_and_evaluate(_config(tiny_data, cache, **over), tmp_path / "w2")
    assert summary["mode"] == "transfer_set" and "synthesis" not in summary
    assert summary["kd_steps"] == 2 * config.distill.kd_steps  # no warm-up: nothing synthesised


def test_noise_images_are_seeded_gaussians_in_the_teachers_statistics():
    """Normalised by the teacher's mean and std they are standard normal (where the clip to
    [0, 1] hardly binds), per channel, the same for a seed and different across seeds."""
    from stars_jax.run_setup import noise_images

    mean, std = (0.5, 0.4, 0.6), (0.1, 0.08, 0.12)
    a = noise_images(512, (8, 8, 3), mean, std, seed=3)
    assert a.images.dtype == np.uint8 and a.images.shape == (512, 8, 8, 3)
    z = (a.images / 255.0 - np.asarray(mean)) / np.asarray(std)
    np.testing.assert_allclose(z.mean(axis=(0, 1, 2)), 0.0, atol=0.03)  # 1/255 rounding
    np.testing.assert_allclose(z.std(axis=(0, 1, 2)), 1.0, atol=0.03)
    np.testing.assert_array_equal(a.images, noise_images(512, (8, 8, 3), mean, std, 3).images)
    assert not np.array_equal(a.images, noise_images(512, (8, 8, 3), mean, std, 4).images)


def test_a_student_distils_from_noise_the_floor(tiny_data, tmp_path):
    over = {"distill.rounds": 2, "distill.mode": "noise", "distill.bank_size": 64}
    summary = train.train_and_evaluate(_config(tiny_data, tmp_path / "c", **over), tmp_path / "w")
    assert summary["mode"] == "noise" and "synthesis" not in summary
    assert summary["kd_steps"] == 2 * _config(tiny_data, "").distill.kd_steps
    assert 0.0 <= summary["student"]["top1"] <= 100.0
