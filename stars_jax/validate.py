"""Every config value checked before any work: the key, the value and what is valid.

``RULES`` holds a rule for every key of ``config.base_config()`` (a test keeps it so);
``check_config`` applies them all and reports every bad value at once, so a run never starts
on a value that would fail (or silently misbehave) rounds later. ``unknown_key_message``
turns an unknown ``--config.x`` into one line naming the nearest valid keys.
"""

from __future__ import annotations

import difflib
import math
import sys
from collections.abc import Callable

from stars_jax.config import old_key_path, resolved
from stars_jax.errors import ConfigError, UserError

# A rule: value -> None if valid, else what a valid value is.
Rule = Callable[[object], str | None]


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def integer(lo: int | None = None, hi: int | None = None, also: tuple = ()) -> Rule:
    def rule(v):
        if v in also and _is_int(v):
            return None
        ok = _is_int(v) and (lo is None or v >= lo) and (hi is None or v <= hi)
        if ok:
            return None
        rng = " and ".join(
            s for s in (lo is not None and f">= {lo}", hi is not None and f"<= {hi}") if s
        )
        extra = f" (or {', '.join(map(str, also))})" if also else ""
        return f"an integer{' ' + rng if rng else ''}{extra}"

    return rule


def real(lo: float | None = None, hi: float | None = None, lo_open=False, hi_open=False) -> Rule:
    def rule(v):
        ok = _is_real(v)
        if ok and lo is not None:
            ok = v > lo if lo_open else v >= lo
        if ok and hi is not None:
            ok = v < hi if hi_open else v <= hi
        if ok:
            return None
        parts = []
        if lo is not None:
            parts.append(f"{'>' if lo_open else '>='} {lo}")
        if hi is not None:
            parts.append(f"{'<' if hi_open else '<='} {hi}")
        return "a finite number" + (" " + " and ".join(parts) if parts else "")

    return rule


def one_of(*choices) -> Rule:
    return lambda v: None if v in choices else f"one of {', '.join(map(repr, choices))}"


def boolean(v) -> str | None:
    return None if isinstance(v, bool) else "True or False"


def text(v) -> str | None:
    return None if isinstance(v, str) else "a string"


def reals_tuple(v) -> str | None:
    ok = isinstance(v, (tuple, list)) and len(v) > 0 and all(_is_real(x) for x in v)
    return None if ok else "a non-empty tuple of finite numbers, e.g. (1.0,) or (1.0, 2.0)"


positive = real(0, lo_open=True)
non_negative = real(0)
count = integer(1)
non_negative_int = integer(0)


def _each_method(methods=None, **rules: Rule) -> dict[str, Rule]:
    """``synth.<method>.<key>`` rules for every method's section (or those of ``methods``)."""
    from stars_jax.config import METHODS

    return {f"synth.{m}.{k}": r for m in methods or METHODS for k, r in rules.items()}


def _rules() -> dict[str, Rule]:
    # Imported here: these modules import jax and flax, which config-only callers skip.
    from stars_jax.calibration import WEIGHTINGS
    from stars_jax.data import LOADERS
    from stars_jax.distill import DTYPES, OPTIMIZERS
    from stars_jax.losses import RCA_REPS
    from stars_jax.models.students import STUDENTS
    from stars_jax.models.teachers import TEACHERS
    from stars_jax.neurons import KERNELS, RESETS, SURROGATES
    from stars_jax.objective import LAYER_SELECTIONS, TAR_THRESHOLDS
    from stars_jax.run_setup import KD_MODES
    from stars_jax.synthesis import SYNTHESIZERS
    from stars_jax.synthesizers.fast import META
    from stars_jax.synthesizers.nayer import EMBEDS

    dtype = one_of(*DTYPES)
    return {
        "seed": non_negative_int,
        "data.name": text,
        "data.kind": one_of(*LOADERS, "auto"),
        "data.path": text,
        "data.cache_dir": text,
        "data.train_split": text,
        "data.test_split": text,
        "data.num_classes": integer(2),
        "data.eval_limit": non_negative_int,
        "data.eval_batch_size": count,
        "data.val_per_class": non_negative_int,
        "data.val_seed": non_negative_int,
        "teacher.arch": one_of(*TEACHERS),
        "teacher.dir": text,
        "teacher.cache_dir": text,
        "teacher.dtype": dtype,
        "teacher.train_epochs": count,
        "teacher.train_batch_size": count,
        "teacher.train_lr": positive,
        "teacher.train_weight_decay": non_negative,
        "student.arch": one_of(*STUDENTS),
        "student.time_steps": count,
        "student.dtype": dtype,
        "neuron.tau": real(1.0),  # decay 1 / tau in (0, 1]
        "neuron.v_threshold": positive,
        "neuron.reset": one_of(*RESETS),
        "neuron.v_reset": real(),
        "neuron.detach_reset": boolean,
        "neuron.surrogate": one_of(*SURROGATES),
        "neuron.alpha": positive,
        "neuron.kernel": one_of(*KERNELS),
        "synth.method": one_of(*SYNTHESIZERS),
        "synth.batch_size": count,
        "synth.crop_pad": non_negative_int,
        "synth.flip": boolean,
        **_each_method(
            steps=count,
            warmup_rounds=non_negative_int,
            lr=positive,
            bn_ema=real(0, 1, hi_open=True),
            a_bn=non_negative,
            a_oh=non_negative,
            a_adv=non_negative,
        ),
        **_each_method(("fast", "nayer", "cmi"), latent_dim=count, generator_width=count),
        "synth.fast.lr_z": non_negative,
        "synth.fast.meta": one_of(*META),
        "synth.fast.reset_l0_round": non_negative_int,
        "synth.nayer.embed": one_of(*EMBEDS),
        "synth.nayer.embed_dim": count,
        "synth.nayer.reinit_every": non_negative_int,
        "synth.cmi.a_cr": non_negative,
        "synth.cmi.cr_temperature": positive,
        "synth.cmi.layers": one_of(*LAYER_SELECTIONS),
        "synth.cmi.bank_size": count,
        "synth.cmi.negatives": count,
        "synth.cmi.head_dim": count,
        "synth.deepinversion.jitter": non_negative_int,
        "synth.deepinversion.a_tv": non_negative,
        "synth.deepinversion.a_l2": non_negative,
        "synth.l_rca": non_negative,
        "synth.rca_sign": one_of(-1.0, 1.0),
        "synth.rca_rep": one_of(*RCA_REPS),
        "synth.l_tar": non_negative,
        "synth.tar_layers": one_of(*LAYER_SELECTIONS),
        "synth.tar_k": reals_tuple,
        "synth.tar_temperature": positive,
        "synth.tar_two_sided": boolean,
        "synth.tar_thresholds": one_of(*TAR_THRESHOLDS),
        "synth.stars_start_round": non_negative_int,
        "synth.tar_stop_round": non_negative_int,
        "synth.stars_weights": one_of(*WEIGHTINGS),
        "distill.mode": one_of(*KD_MODES),
        "distill.transfer_set": text,
        "distill.rounds": count,
        "distill.kd_steps": count,
        "distill.batch_size": count,
        "distill.optimizer": one_of(*OPTIMIZERS),
        "distill.nesterov": boolean,
        "distill.lr": positive,
        "distill.lr_min": non_negative,
        "distill.lr_warmup_rounds": non_negative_int,
        "distill.weight_decay": non_negative,
        "distill.t_kd": positive,
        "distill.per_time_step": boolean,
        "distill.b_rca": non_negative,
        "distill.b_tar": non_negative,
        "distill.rca_rep": one_of(*RCA_REPS),
        "distill.bank_size": count,
        "distill.crop_pad": non_negative_int,
        "distill.flip": boolean,
        "distill.eval_every": count,
        "distill.ema_decay": real(0.0, 1.0, hi_open=True),
        "distill.time_budget_s": non_negative,
        "mesh.data": integer(1, also=(-1,)),
        "ckpt.every": count,
        "ckpt.keep": count,
        "energy.enabled": boolean,
        "energy.pj_per_ac": non_negative,
        "energy.pj_per_mac": non_negative,
        "log.every": count,
        "log.grid_images": non_negative_int,
        "log.grad_ratio_every": non_negative_int,
        "log.tensorboard": boolean,
    }


def flatten(config) -> dict:
    """``{"section.key": value}`` of a ConfigDict (or nested dicts)."""
    out = {}
    for key, value in config.items() if hasattr(config, "items") else ():
        if hasattr(value, "items"):
            out.update({f"{key}.{k}": v for k, v in flatten(value).items()})
        else:
            out[key] = value
    return out


def problems(config) -> list[str]:
    """One line per bad value (and per key no rule knows), empty if the config is valid."""
    rules, flat = _rules(), flatten(config)
    out = []
    for key, value in flat.items():
        rule = rules.get(key)
        if rule is None:
            out.append(f"{key}: not a key of the base config ({unknown_key_hint(key, flat)})")
            continue
        want = rule(value)
        if want:
            out.append(f"{key}={value!r}: must be {want}")
    if not out:  # on the view the run reads: synth's shared keys and its method's
        out += _cross_checks(flatten(resolved(config)))
    return out


def _cross_checks(flat: dict) -> list[str]:
    out = []
    if flat["distill.mode"] == "transfer_set" and not flat["distill.transfer_set"]:
        out.append(
            "distill.transfer_set='': must name a transfer set (stars_jax.export_bank's --out) "
            "when distill.mode='transfer_set'"
        )
    stop, start = flat["synth.tar_stop_round"], flat["synth.stars_start_round"]
    if stop and stop <= start:
        out.append(
            f"synth.tar_stop_round={stop!r}: must be 0 (never) or after synth.stars_start_round "
            f"({start!r}), else TAR never acts"
        )
    if flat["distill.lr_min"] > flat["distill.lr"]:
        out.append(
            f"distill.lr_min={flat['distill.lr_min']!r}: must be <= distill.lr "
            f"({flat['distill.lr']!r})"
        )
    return out


def check_config(config) -> None:
    """Raises a ``ConfigError`` listing every bad value, with how to set it."""
    bad = problems(config)
    if bad:
        raise ConfigError(
            "Invalid config value(s):\n  "
            + "\n  ".join(bad)
            + "\nFix them in the config file or with --config.KEY=VALUE."
        )


def unknown_key_hint(key: str, known) -> str:
    moved = old_key_path(key, known.get("synth.method"))
    if moved != key:  # a key of the flat synth layout
        return f"each synthesizer's settings are in its section now: {moved}"
    near = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
    if not near:
        section = key.split(".")[0]
        near = sorted(k for k in known if k.startswith(section + "."))[:5]
    return "nearest valid keys: " + ", ".join(near) if near else "no similar key"


def unknown_key_message(key: str, config) -> str:
    return f"Unknown config key {key!r}; {unknown_key_hint(key, flatten(config))}."


# --- python -m stars_jax.validate ---------------------------------------------------------

USAGE = (
    "python -m stars_jax.validate --config=FILE [--config.KEY=VALUE ...] [--workdir=DIR "
    "[--allow_config_change=KEY,...]]"
)


def report(config, workdir: str | None = None, allow: tuple[str, ...] = ()) -> list[str]:
    """What ``python -m stars_jax.main`` with the same flags would refuse before any work:
    every bad value, and with ``workdir`` a resume its checkpoints' config does not allow."""
    found = problems(config)
    if workdir:
        from stars_jax import workdir as workdir_lib  # imports this module

        try:
            workdir_lib.check_fingerprint(workdir, config, allow)
        except UserError as err:  # a workdir holding another run, or unreadable
            found.append(str(err))
    return found


def _main(argv) -> None:
    from absl import flags

    fv = flags.FLAGS
    if len(argv) > 1:
        raise SystemExit(f"error: unexpected arguments {argv[1:]}\nUsage: {USAGE}")
    found = report(fv.config, fv.workdir, tuple(fv.allow_config_change))
    if found:
        print(f"{len(found)} problem(s) in {fv['config'].config_filename}:", file=sys.stderr)
        for line in found:
            print("  " + line.replace("\n", "\n  "), file=sys.stderr)
        raise SystemExit(2)
    where = f"; it may resume {fv.workdir}" if fv.workdir else ""
    print(f"ok: {fv['config'].config_filename} is a valid config{where}.")


def _define_cli() -> None:
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config file (ml_collections).")
    flags.DEFINE_string("workdir", None, "Also check a resume into this workdir.")
    flags.DEFINE_list("allow_config_change", [], "As the main job's flag of that name.")
    flags.DEFINE_bool("debug", False, "Show tracebacks of expected errors too.")
    flags.mark_flags_as_required(["config"])


if __name__ == "__main__":
    from absl import app

    from stars_jax import cli

    _define_cli()
    app.run(_main, flags_parser=lambda argv: cli.parse_or_exit(argv, USAGE))
