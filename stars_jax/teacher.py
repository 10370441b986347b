"""The teacher of a run: a converted model directory, or one trained here on real data.

Training entry point (the embedded default does this itself when no teacher is given):
  python -m stars_jax.teacher --config configs/default.py --out DIR
A trained teacher is cached under ``config.teacher.cache_dir`` keyed by dataset name, arch,
epochs, seed and the data's identity (path, class folders, file counts), so reruns reuse it
and another dataset under the same name does not; a teacher whose loss went non-finite is
never saved.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np
import optax

from stars_jax import cli, data_checks, losses
from stars_jax import data as data_lib
from stars_jax.accuracy import evaluate
from stars_jax.apply import NORMALIZATION
from stars_jax.distill import TrainState, advanced, apply_train, init_train_state, train_view
from stars_jax.errors import InputError
from stars_jax.model_dir import check_model_dir, load_model_dir, save_model_dir
from stars_jax.models.teachers import make_teacher


def normalization_for(data_cfg, train_images: np.ndarray | None):
    """Known per-channel (mean, std) for the dataset, else measured on its training images."""
    if data_cfg.name in NORMALIZATION:
        return NORMALIZATION[data_cfg.name]
    if train_images is None:
        raise ValueError(f"No normalization known for dataset {data_cfg.name!r}.")
    x = train_images.astype(np.float64) / 255.0
    return tuple(x.mean(axis=(0, 1, 2))), tuple(x.std(axis=(0, 1, 2)))


def _train_step(model, optimizer, mean, std, flip, state: TrainState, images, labels, key):
    """One SGD step on cross-entropy, from the KD step's pieces (``stars_jax.distill``); the
    learning-rate schedule sits inside ``optimizer``."""
    x = train_view(images, key, 2, flip, mean, std)

    def loss_fn(params):
        (logits, _), batch_stats = apply_train(model, params, state.batch_stats, x)
        return losses.cross_entropy(logits, labels), batch_stats

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return advanced(state, params, batch_stats, opt_state), loss


def train_teacher(config, train: data_lib.Dataset, test: data_lib.Dataset, out_dir) -> Path:
    """Trains ``config.teacher.arch`` on ``train`` with SGD and writes a model directory."""
    tcfg = config.teacher
    split = f"{config.data.name} {{}} split ({config.data.path})"
    data_checks.check_classes(train, config.data.num_classes, split.format(config.data.train_split))
    data_checks.check_classes(test, config.data.num_classes, split.format(config.data.test_split))
    data_checks.check_trainable(train, tcfg.train_batch_size, split.format("training"))
    mean, std = normalization_for(config.data, train.images)
    model = make_teacher(tcfg.arch, config.data.num_classes)
    bs = tcfg.train_batch_size
    steps_per_epoch = len(train.images) // bs
    total = steps_per_epoch * tcfg.train_epochs
    optimizer = optax.chain(
        optax.add_decayed_weights(tcfg.train_weight_decay),
        optax.sgd(optax.cosine_decay_schedule(tcfg.train_lr, total), momentum=0.9, nesterov=True),
    )
    key = jax.random.fold_in(jax.random.key(config.seed), 7)
    state = init_train_state(model, optimizer, key, train.images.shape[1:])
    flip = bool(config.distill.flip)
    step = jax.jit(
        lambda s, x, y, k: _train_step(model, optimizer, mean, std, flip, s, x, y, k),
        donate_argnums=0,
    )
    print(
        f"Training teacher {tcfg.arch} on {config.data.name}: {tcfg.train_epochs} epochs "
        f"of {steps_per_epoch} steps (batch {bs}).",
        flush=True,
    )
    state = _fit(step, state, train, bs, tcfg.train_epochs, key, config.seed)
    path = save_model_dir(
        out_dir,
        kind="teacher",
        arch=tcfg.arch,
        num_classes=config.data.num_classes,
        variables=jax.device_get(state.variables),
        normalization=(mean, std),
        input_shape=train.images.shape[1:],
        extra={
            "trained_on": config.data.name,
            "data_identity": data_checks.data_identity(config.data),
            "epochs": tcfg.train_epochs,
            "seed": config.seed,
        },
    )
    loaded = load_model_dir(path)
    result = evaluate(
        loaded.logits, loaded.variables, test.images, test.labels, config.data.eval_batch_size
    )
    print(
        f"Teacher top-1 on the real {config.data.name} {config.data.test_split} split: "
        f"{result['top1']:.2f}% ({result['n']} images); saved to {path}",
        flush=True,
    )
    return path


def _fit(step, state, train: data_lib.Dataset, bs: int, epochs: int, key, seed: int):
    """``epochs`` of shuffled batches through the jitted ``step``; a loss that went
    non-finite stops it (``_check_finite_loss``)."""
    steps_per_epoch = len(train.images) // bs
    rng = np.random.default_rng(seed)
    t0 = time.time()
    for epoch in range(epochs):
        order = rng.permutation(len(train.images))
        loss_sum = 0.0
        for i in range(steps_per_epoch):
            idx = order[i * bs : (i + 1) * bs]
            k = jax.random.fold_in(key, epoch * steps_per_epoch + i)
            state, loss = step(state, train.images[idx], train.labels[idx], k)
            if i % 50 == 0 or i == steps_per_epoch - 1:
                loss_sum = float(loss)
                _check_finite_loss(loss_sum, epoch, i)
        print(
            f"  epoch {epoch + 1}/{epochs}: loss {loss_sum:.3f}, {time.time() - t0:.0f}s",
            flush=True,
        )
    return state


def _check_finite_loss(loss: float, epoch: int, step: int) -> None:
    """Stops a teacher whose loss went non-finite before it is saved (or cached)."""
    if not np.isfinite(loss):
        raise InputError(
            f"The teacher's training loss became {loss} in epoch {epoch + 1} (step {step + 1}); "
            "nothing was saved. Lower --config.teacher.train_lr, and check that the data's "
            "classes match data.num_classes."
        )


def cached_teacher_dir(config) -> Path:
    """Keyed on the data's identity too (``data_checks.data_identity``): another folder under
    the same ``data.name`` never reuses a teacher trained on other classes."""
    t = config.teacher
    name = f"{config.data.name}_{t.arch}_e{t.train_epochs}_s{config.seed}"
    return Path(t.cache_dir).expanduser() / f"{name}_{data_checks.data_identity(config.data)}"


def resolve_teacher(config, load_train):
    """Loads ``config.teacher.dir``, or trains (once, cached) a teacher on the real data.

    Args:
      load_train: zero-argument callable returning ``(train, test)`` Datasets, called only
        when a teacher must be trained.
    """
    tdir = config.teacher.dir
    if not tdir:
        tdir = cached_teacher_dir(config)
        if not (tdir / "model.json").exists():
            train, test = load_train()
            train_teacher(config, train, test, tdir)
        else:
            print(f"Using cached teacher {tdir}", flush=True)
    loaded = load_model_dir(tdir)
    check_model_dir(loaded.meta, arch=config.teacher.arch, num_classes=config.data.num_classes)
    if loaded.meta["kind"] != "teacher":
        raise ValueError(f"{tdir} holds a {loaded.meta['kind']}, not a teacher.")
    return loaded


PROG = "python -m stars_jax.teacher"
USAGE = f"{PROG} --config=FILE [--config.KEY=VALUE ...] [--out=DIR]"


def define_flags(fv) -> None:
    """The CLI's flags (``stars_jax.cli``)."""
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config", None, "Config file (ml_collections).", flag_values=fv, lock_config=True
    )
    flags.DEFINE_string(
        "out", "", "Output model directory (default: the teacher cache).", flag_values=fv
    )
    flags.DEFINE_bool("debug", False, cli.DEBUG_HELP, flag_values=fv)
    flags.mark_flags_as_required(["config"], flag_values=fv)


def run(args) -> Path:
    """Trains the config's teacher on its real data; returns the model directory."""
    config = args.config
    train = data_lib.load_split(config.data, config.data.train_split)
    test = data_lib.load_split(config.data, config.data.test_split)
    return train_teacher(config, train, test, args.out or cached_teacher_dir(config))


def main(argv=None) -> Path:
    """CLI entry point (``argv`` with or without the program name)."""
    return run(cli.parse(define_flags, argv, PROG))


if __name__ == "__main__":
    cli.run_main(define_flags, run, USAGE)
