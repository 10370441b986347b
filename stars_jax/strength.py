"""How strongly each synthesis term acts: the norm of its gradient on the images, against the
BN term's.

A term's weight says little by itself: TAR at ``l_tar`` 1 moves the images ~2e-4 as much as
the BN term on the embedded default, RCA at ``l_rca`` 1 ~2e-2 (issue 24). The ratio
``||d(w_k L_k)/dx|| / ||d(a_bn L_BN)/dx||`` on a batch of synthetic images says it directly,
whatever the teacher. ``term_gradient_norms`` measures it (one backward pass per term);
``ratio_scales`` turns target ratios into the multipliers that make STARS's terms act at them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from stars_jax.objective import synthesis_loss

# Each term of L_syn and the config weight that scales it (RCA's sign comes with its weight).
TERM_WEIGHTS = {"bn": "a_bn", "ce": "a_oh", "adv": "a_adv", "rca": "l_rca", "tar": "l_tar"}
STARS_TERMS = ("rca", "tar")


def config_weights(cfg) -> dict:
    """``{term: signed weight}`` of every term as ``cfg`` sets it."""
    w = {t: float(cfg[k]) for t, k in TERM_WEIGHTS.items()}
    w["rca"] *= float(cfg.rca_sign)
    return w


def unit_stars_weights(cfg) -> dict:
    """The BN term at its weight, STARS's terms at weight 1 (RCA with its sign): what
    ``ratio_scales`` needs."""
    return {"bn": float(cfg.a_bn), "rca": float(cfg.rca_sign), "tar": 1.0}


def _only(cfg, term: str):
    """``cfg`` with ``term`` alone at weight 1 (RCA with a positive sign)."""
    c = ml_collections.ConfigDict(cfg.to_dict())
    for key in TERM_WEIGHTS.values():
        c[key] = 0.0
    c[TERM_WEIGHTS[term]] = 1.0
    c.rca_sign = 1.0
    return c


def term_gradients(
    x, labels, teacher_vars, student_vars, *, teacher, student, cfg, tar_ref=None, weights=None
) -> dict:
    """``{term: d(w_term L_term)/dx}`` on a normalised batch ``x``, at ``weights`` (default:
    the config's, ``config_weights``; values may be traced arrays, as the gradient is linear
    in them); terms at a literal weight 0 are left out. The student runs as in a synthesis
    step after the warm-up. One backward pass per term."""
    grads = {}
    for term, w in (config_weights(cfg) if weights is None else weights).items():
        if isinstance(w, (int, float)) and w == 0:
            continue

        kw = dict(teacher=teacher, student=student, cfg=_only(cfg, term), tar_ref=tar_ref)

        def loss(x_, kw=kw):
            return synthesis_loss(x_, labels, teacher_vars, student_vars, **kw)[0]

        grads[term] = w * jax.grad(loss)(x)
    return grads


def gradient_ratios(grads: dict) -> dict:
    """``{term: ||g_term|| / ||g_bn||}`` (the BN term's own ratio is 1)."""
    norm = {k: jnp.sqrt(jnp.sum(jnp.square(g.astype(jnp.float32)))) for k, g in grads.items()}
    bn = jnp.maximum(norm["bn"], 1e-30)
    return {k: v / bn for k, v in norm.items()}


def ratio_scales(unit_ratios: dict, cfg) -> dict:
    """Multipliers of ``l_rca`` and ``l_tar`` that make those terms act at the ratios the
    config's weights name: with ratio weights, ``l_tar`` 0.1 means TAR's gradient on the
    images is a tenth of the BN term's. ``unit_ratios``: ``gradient_ratios`` of
    ``term_gradients`` at ``unit_stars_weights``. The effective weight is ``l * scale`` with
    ``scale = 1 / unit_ratio``; a term with no gradient at all keeps scale 0."""
    out = {}
    for term in STARS_TERMS:
        r = unit_ratios.get(term)
        out[term] = jnp.where(r > 0, 1.0 / jnp.maximum(r, 1e-30), 0.0) if r is not None else 0.0
    return out
