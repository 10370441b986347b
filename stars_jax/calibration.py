"""STARS's synthesis weights as gradient ratios (``synth.stars_weights = "ratio"``).

A raw weight says little about how strongly a term acts: on the embedded default ``l_tar`` 1
moves the images ~2e-4 as much as the BN term, ``l_rca`` 1 ~2e-2 (issue 24). With ratio
weights ``l_rca`` and ``l_tar`` name the ratio itself: ``l_tar`` 0.1 means TAR's gradient on
the images is a tenth of the BN term's, whatever the teacher.

The calibration is fixed, not running: once, just before the first round in which STARS acts
(``first_stars_round``), each term's gradient at unit weight is measured against the BN
term's on a synthesis batch drawn from the memory bank (the images synthesised so far) with
the student as it is then (``strength``), and the raw weights that give the asked ratios on
that batch are kept for the rest of the run (in ``run_state.json``, so a resume keeps them).
A fixed weight keeps the objective the same from round to round (a running normalisation
would rescale TAR as it succeeds); the ratio then drifts as the images and the student change,
and ``synth/grad_ratio/<term>`` logs where it went. The calibration needs a kept batch, so a
run with ratio weights needs a warm-up round or ``synth.stars_start_round`` >= 1.
"""

from __future__ import annotations

import functools

import jax
import ml_collections

from stars_jax import strength
from stars_jax.bank import bank_sample
from stars_jax.distill import bank_tar_reference, batch_grad_ratios
from stars_jax.errors import ConfigError

WEIGHTINGS = ("raw", "ratio")
_NO_BN = (
    "synth.stars_weights='ratio' measures STARS's terms against the BN term, but its weight "
    "synth.a_bn is 0: give it a weight, or use --config.synth.stars_weights=raw."
)


def first_stars_round(synth_cfg, warmup_rounds: int) -> int:
    """The first round (counting the warm-up) whose synthesis has STARS's terms on."""
    return max(int(warmup_rounds), int(synth_cfg.stars_start_round))


def check(synth_cfg, warmup_rounds: int) -> None:
    """Ratio weights need a kept batch before STARS starts and a BN term to measure against."""
    if synth_cfg.stars_weights != "ratio":
        return
    if float(synth_cfg.a_bn) == 0.0:
        raise ConfigError(_NO_BN)
    if first_stars_round(synth_cfg, warmup_rounds) < 1:
        raise ConfigError(
            "synth.stars_weights='ratio' calibrates on the images kept before STARS starts, "
            "but STARS acts from round 0: give a warm-up (--config.synth.<method>."
            "warmup_rounds=N) or --config.synth.stars_start_round=1 or later."
        )


def unit_ratios(ctx, synth_cfg, teacher_vars, student_vars, bank, key) -> dict:
    """``{term: ratio}`` of the BN term and STARS's terms at unit weight on a synthesis-sized
    batch drawn from ``bank`` (``distill.batch_grad_ratios``; percentile TAR's reference from
    another bank batch, as a round draws it). Pure; ``ctx``: the run's ``KDContext``."""
    k_sample, k_ref = jax.random.split(key)
    images, labels = bank_sample(bank, k_sample, synth_cfg.batch_size)
    tar_ref = None
    if synth_cfg.tar_thresholds == "percentile":
        tar_ref = bank_tar_reference(ctx, synth_cfg, teacher_vars, bank, k_ref)
    weights = strength.unit_stars_weights(synth_cfg)
    return batch_grad_ratios(
        ctx, synth_cfg, teacher_vars, student_vars, images, labels, tar_ref, weights
    )


def calibrate(ctx, synth_cfg, teacher_vars, student_vars, bank, key) -> dict:
    """The raw weights that make STARS's terms act at the ratios ``l_rca`` and ``l_tar``
    name, with the unit ratios they came from (host floats, for ``run_state.json``)."""
    ratios = jax.jit(functools.partial(unit_ratios, ctx, synth_cfg))(
        teacher_vars, student_vars, bank, key
    )
    if not ratios:  # the BN term is the yardstick
        raise ConfigError(_NO_BN)
    scales = strength.ratio_scales(ratios, synth_cfg)
    return {
        "l_rca": float(synth_cfg.l_rca) * float(scales["rca"]),
        "l_tar": float(synth_cfg.l_tar) * float(scales["tar"]),
        "unit_ratios": {k: float(v) for k, v in ratios.items()},
    }


def weighted(synth_cfg, weights: dict) -> ml_collections.ConfigDict:
    """``synth_cfg`` with the calibrated raw weights in place of the ratios."""
    c = ml_collections.ConfigDict(synth_cfg.to_dict())
    c.l_rca, c.l_tar = weights["l_rca"], weights["l_tar"]
    return c


def describe(synth_cfg, weights: dict, round_: int) -> str:
    u = weights["unit_ratios"]
    return (
        f"STARS weights calibrated before round {round_ + 1} (synth.stars_weights=ratio): "
        f"l_rca ratio {synth_cfg.l_rca:g} -> weight {weights['l_rca']:.4g} (at weight 1 its "
        f"gradient is {u.get('rca', 0.0):.3g} of BN's), l_tar ratio {synth_cfg.l_tar:g} -> "
        f"weight {weights['l_tar']:.4g} (at weight 1: {u.get('tar', 0.0):.3g})."
    )
