"""Synthesizers: how each round's batch of surrogate images is made from the frozen teacher.

=================  ========================================================  ====================
``synth.method``   optimised every round                                     reference code
=================  ========================================================  ====================
``deepinversion``  the pixels of a fresh batch                               Fast-Datafree deepinv
``fast``           fresh latents and a copy of a persistent generator, which  Fast-Datafree
                   a first-order MAML (default) or Reptile step meta-learns   ``fast_meta.py``
``nayer``          a persistent class-conditional generator: label            NAYER ``nayer.py``
                   embedding -> BN -> noisy layer re-drawn each round -> body
``cmi``            a generator re-initialised each round and its latents,     CMI
                   plus CMI's contrastive term over a bank of teacher         ``contrastive.py``
                   features
=================  ========================================================  ====================

All minimise ``objective.synthesis_loss`` (BN + CE + adversarial + the STARS terms RCA and TAR;
BN + CE only in warm-up rounds) on an augmented view of the images, and keep the round's
lowest-loss batch (each step's loss is that of the batch before the step's update, as in the
references), returned as uint8 pixels with the labels it was made for.

Every synthesizer has one shape (``synthesizers.common``): a frozen dataclass of static parts
with four pure methods, ``init(key, teacher_vars) -> state``, ``begin(state, key, round_) ->
(state, Work)``, ``step(state, Work, StepInputs) -> (Work, metrics)`` and ``end(state, Work) ->
(state, images_u8, labels)``, which the round loop in ``distill`` jits. A round's ``Work`` is
one type for all (what only one method carries sits in its ``extra`` slot); the state kept
across rounds is each method's own NamedTuple. The generator methods share
``common.GeneratorMethod`` (a generator step on L_syn, with an optional extra term: CMI's).
Adding a synthesizer is a module under ``stars_jax/synthesizers`` with a
``make_<name>(setup) -> Synthesizer`` function, plus an entry in ``SYNTHESIZERS``.
"""

from __future__ import annotations

from stars_jax.objective import TAR_THRESHOLDS
from stars_jax.synthesizers.cmi import make_cmi
from stars_jax.synthesizers.common import StepInputs, Synthesizer, SynthSetup, Work
from stars_jax.synthesizers.deepinversion import make_deepinversion
from stars_jax.synthesizers.fast import make_fast
from stars_jax.synthesizers.nayer import make_nayer

__all__ = ["SYNTHESIZERS", "StepInputs", "Synthesizer", "Work", "make_synthesizer"]

SYNTHESIZERS = {
    "deepinversion": make_deepinversion,
    "fast": make_fast,
    "nayer": make_nayer,
    "cmi": make_cmi,
}


def make_synthesizer(
    cfg, teacher, student, image_shape, num_classes, mean, std, batch_sharding=None
) -> Synthesizer:
    """The synthesizer named by ``cfg.method``; ``batch_sharding`` splits its batch."""
    if cfg.method not in SYNTHESIZERS:
        raise ValueError(f"Unknown synth.method {cfg.method!r}; valid: {sorted(SYNTHESIZERS)}.")
    if cfg.tar_thresholds not in TAR_THRESHOLDS:
        raise ValueError(
            f"Unknown synth.tar_thresholds {cfg.tar_thresholds!r}; valid: {TAR_THRESHOLDS}."
        )
    setup = SynthSetup(
        cfg,
        teacher,
        student,
        tuple(image_shape),
        num_classes,
        tuple(mean),
        tuple(std),
        batch_sharding,
    )
    return SYNTHESIZERS[cfg.method](setup)
