"""Ratio weights (stars_jax.calibration): the calibrated raw weights make STARS's terms act at
the asked ratios on the calibration batch, a run without a kept batch before STARS or without a
BN term to measure against is refused, and a run calibrates once, says so and keeps the weights
across a resume."""

import json

import jax
import numpy as np
import pytest

from configs.default import get_config
from stars_jax import calibration, errors, strength, train
from stars_jax.apply import normalize
from stars_jax.bank import bank_add, bank_sample, init_bank
from stars_jax.distill import KDContext, init_train_state, make_optimizer
from tests.synth_nets import MEAN, SHAPE, STD, K, _cfg
from tests.test_train import _config, make_tiny_data


def test_calibrated_weights_act_at_the_asked_ratios(nets):
    teacher, tv, student, _ = nets
    opt = make_optimizer(get_config().distill)
    st = init_train_state(student, opt, jax.random.key(5), SHAPE, 10)
    ctx = KDContext(teacher, student, opt, MEAN, STD, lr=1e-3, num_classes=K)
    cfg = _cfg(l_rca=0.05, l_tar=0.2, stars_weights="ratio")  # read as ratios
    images = jax.random.randint(jax.random.key(1), (16, *SHAPE), 0, 256).astype(np.uint8)
    labels = np.arange(16, dtype=np.int32) % K
    bank = bank_add(init_bank(32, SHAPE), images, labels, labels)
    key = jax.random.key(9)
    weights = calibration.calibrate(ctx, cfg, tv, st.variables, bank, key)
    assert weights["unit_ratios"]["bn"] == pytest.approx(1.0)
    # The same batch the calibration drew, at the calibrated weights: the asked ratios.
    x_u8, y = bank_sample(bank, jax.random.split(key)[0], cfg.batch_size)
    grads = strength.term_gradients(
        normalize(x_u8, MEAN, STD),
        y,
        tv,
        st.variables,
        teacher=teacher,
        student=student,
        cfg=calibration.weighted(cfg, weights),
    )
    ratios = strength.gradient_ratios(grads)
    assert float(ratios["rca"]) == pytest.approx(0.05, rel=1e-3)
    assert float(ratios["tar"]) == pytest.approx(0.2, rel=1e-3)
    assert weights["l_tar"] != pytest.approx(0.2)  # the raw weight differs from the ratio


def test_ratio_weights_need_a_kept_batch_before_stars():
    cfg = _cfg(stars_weights="ratio", stars_start_round=0)
    with pytest.raises(errors.ConfigError, match="stars_start_round=1"):
        calibration.check(cfg, warmup_rounds=0)
    calibration.check(cfg, warmup_rounds=1)
    calibration.check(_cfg(stars_weights="raw"), warmup_rounds=0)
    with pytest.raises(errors.ConfigError, match="a_bn is 0"):
        calibration.check(_cfg(stars_weights="ratio", a_bn=0.0), warmup_rounds=1)


def test_a_run_calibrates_once_and_a_resume_keeps_the_weights(tmp_path, capsys):
    data = make_tiny_data(tmp_path / "data")
    over = {"distill.rounds": 3, "synth.stars_weights": "ratio", "synth.l_tar": 0.1}
    c = _config(data, tmp_path / "cache", **over, **{"ckpt.every": 1})
    assert c.synth.fast.warmup_rounds >= 1
    train.train_and_evaluate(c, tmp_path / "w")
    out = capsys.readouterr().out
    assert out.count("STARS weights calibrated before round 2") == 1, out[-2000:]
    saved = json.loads((tmp_path / "w/checkpoints/2/run_state.json").read_text())
    weights = saved["stars_weights"]
    assert weights["l_tar"] > 0 and weights["unit_ratios"]["bn"] == pytest.approx(1.0)
    # Two more rounds from the checkpoint: no second calibration, the same weights kept.
    more = _config(data, tmp_path / "cache", **{**over, "distill.rounds": 5}, **{"ckpt.every": 1})
    train.train_and_evaluate(more, tmp_path / "w")
    assert "calibrated" not in capsys.readouterr().out
    again = json.loads((tmp_path / "w/checkpoints/4/run_state.json").read_text())
    assert again["stars_weights"] == weights
