"""Any traceable PyTorch CNN as a ``graph`` teacher, checked against PyTorch on conversion.

``from_torch(module, image_size=..., normalize=...)`` traces the module (``torch_graph``),
copies its weights into the Flax graph teacher (``models.graph``), runs both on a fixed batch
of random images in eval mode (``parity``) and refuses a conversion whose logits differ by more
than ``PARITY_RTOL * max(1, max |torch logit|)``. ``torchvision_model`` and ``import_callable``
build the source module for ``python -m stars_jax.convert --arch torchvision/NAME`` and
``--torch_module PKG.MODULE:CALLABLE``.
"""

from __future__ import annotations

import functools
import importlib
import json
import sys
import types
from collections.abc import Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from stars_jax.convert import (
    TORCHVISION_PREFIX,
    _unflatten,
    parse_normalization,
    read_checkpoint,
    torch_key_to_flax,
)
from stars_jax.errors import ConfigError, InputError
from stars_jax.model_dir import LoadedModel, graph_teacher, loaded_model, save_model_dir
from stars_jax.models.graph import GRAPH_ARCH
from stars_jax.torch_graph import graph_spec, used_state_dict

# float32 on CPU: errors of ResNet-50 / VGG-16 sized graphs stay near 1e-6 of the logit scale.
PARITY_RTOL = 1e-4  # allowed max |flax - torch| per unit of max(1, max |torch logit|)
PARITY_BATCH = 4
PARITY_SEED = 0
TORCHVISION_TESTED = ("resnet18", "resnet34", "resnet50", "vgg11_bn", "vgg16_bn", "mobilenet_v2")


class ParityError(InputError):
    """The converted teacher's logits differ from PyTorch's beyond the tolerance."""


def import_torchvision_models():
    """``torchvision.models``. A CPU torch beside a torchvision built for another torch fails
    on the compiled detection ops, which the classifiers do not use: only then retry with a
    stub for the module that registers them."""
    try:
        import torchvision.models as models
    except (RuntimeError, ImportError) as err:
        if "torchvision::" not in str(err):
            raise InputError(
                f"cannot import torchvision ({err}); pip install stars_jax[torchvision]."
            ) from err
        for name in [m for m in sys.modules if m.startswith("torchvision")]:
            del sys.modules[name]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType(
            "torchvision._meta_registrations"
        )
        import torchvision.models as models
    return models


def torchvision_model(name: str, num_classes: int):
    """A randomly initialised torchvision classifier ``name`` with ``num_classes`` outputs."""
    models = import_torchvision_models()
    try:
        return models.get_model(name, weights=None, num_classes=num_classes)
    except (ValueError, KeyError) as err:
        known = sorted(models.list_models(module=models))
        raise ConfigError(
            f"torchvision has no classifier {name!r} ({err}); tested: {list(TORCHVISION_TESTED)}, "
            f"others of {known[:8]}... may trace too."
        ) from err


def import_callable(target: str, kwargs: Mapping | None = None):
    """``PKG.MODULE:CALLABLE`` imported and called with ``kwargs``: the user's model."""
    mod_name, sep, attr = target.partition(":")
    if not sep or not mod_name or not attr:
        raise ConfigError(f"--torch_module {target!r} must be PKG.MODULE:CALLABLE.")
    try:
        obj = importlib.import_module(mod_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise InputError(
            f"cannot import --torch_module {target!r} ({type(err).__name__}: {err}); is its "
            "package on PYTHONPATH?"
        ) from err
    try:
        return obj(**dict(kwargs or {}))
    except TypeError as err:
        raise ConfigError(
            f"{target}(**{dict(kwargs or {})}) failed: {err}; fix --torch_kwargs."
        ) from err


def load_weights(module, state_dict: Mapping[str, np.ndarray]) -> None:
    """Loads a checkpoint's state dict into ``module`` (strict: every key must match)."""
    import torch

    try:
        module.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()})
    except RuntimeError as err:
        raise InputError(f"the checkpoint does not fit the model: {err}") from err


def _variables(module, spec: Mapping, model, input_shape) -> dict:
    """The module's weights as the graph teacher's variables, checked against its shapes."""
    flat = {}
    for key, value in used_state_dict(module, spec).items():
        mapped = torch_key_to_flax(key, value)
        if mapped is not None:
            flat[mapped[0]] = mapped[1].astype(np.float32)
    want = jax.eval_shape(
        functools.partial(model.init, train=False),
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, *input_shape), jnp.float32),
    )
    want = {
        (col, *(k.key for k in kp)): tuple(v.shape)
        for col in ("params", "batch_stats")
        for kp, v in jax.tree_util.tree_leaves_with_path(want.get(col, {}))
    }
    got = {k: tuple(v.shape) for k, v in flat.items()}
    if want != got:
        bad = sorted(set(want) ^ set(got)) + [k for k in want if k in got and want[k] != got[k]]
        raise InputError(f"internal: the graph's variables do not match the module's: {bad[:6]}")
    return _unflatten(flat)


def parity(module, loaded: LoadedModel, batch: int = PARITY_BATCH, seed: int = PARITY_SEED) -> dict:
    """Runs torch (eval, float32) and the converted teacher on the same random images in
    [0, 1]; returns max abs / rel difference, top-1 agreement, tolerance and whether it passed."""
    import torch

    h, w, c = loaded.meta["input_shape"]
    images = np.random.default_rng(seed).uniform(0, 1, (batch, h, w, c)).astype(np.float32)
    norm = loaded.meta["normalization"]
    x = (images - np.asarray(norm["mean"], np.float32)) / np.asarray(norm["std"], np.float32)
    module.eval()
    with torch.no_grad():
        want = module(torch.from_numpy(x.transpose(0, 3, 1, 2)).float()).numpy()
    got = np.asarray(loaded.logits(loaded.variables, jnp.asarray(images)))
    scale = max(1.0, float(np.abs(want).max()))
    diff = float(np.abs(got - want).max())
    tol = PARITY_RTOL * scale
    return {
        "batch": batch,
        "seed": seed,
        "max_abs_diff": diff,
        "max_rel_diff": diff / scale,
        "max_abs_logit": float(np.abs(want).max()),
        "top1_agreement": float(np.mean(got.argmax(-1) == want.argmax(-1))),
        "tolerance": tol,
        "rule": f"max |flax - torch| <= {PARITY_RTOL:g} * max(1, max |torch logit|), float32",
        "passed": diff <= tol,
    }


def parity_line(report: Mapping) -> str:
    return (
        f"parity with torch on {report['batch']} random images: max abs diff "
        f"{report['max_abs_diff']:.2e} (relative {report['max_rel_diff']:.2e}, tolerance "
        f"{report['tolerance']:.2e}), top-1 agreement {100 * report['top1_agreement']:.0f}%"
    )


def _resolve_normalization(normalize, channels: int):
    if normalize is None or isinstance(normalize, str):
        mean, std, _ = parse_normalization(normalize or "none", {}, channels)
        return mean, std
    mean, std = normalize
    return tuple(map(float, mean)), tuple(map(float, std))


def from_torch(
    module,
    *,
    image_size: int | Sequence[int],
    normalize=None,
    num_classes: int | None = None,
    channels: int = 3,
    out: str | Path | None = None,
    source: str | None = None,
    extra: Mapping | None = None,
) -> LoadedModel:
    """A PyTorch CNN (in memory) as a ``graph`` teacher, checked against torch.

    Args:
      module: the ``nn.Module`` (NCHW images in, logits ``[B, K]`` out); put in eval mode.
      image_size: ``H`` (square) or ``(H, W)`` of its inputs.
      normalize: ``"imagenet"``, ``"cifar10"``, ``"none"`` (default), ``"m1,..,s3"`` or
        ``(mean, std)``: what the module expects of images scaled to [0, 1].
      num_classes: K, checked against the module's output if given.
      out: if given, the model directory written (after the parity check passed).
      source: a description of where the module came from, kept in ``model.json``.

    Returns:
      What ``stars_jax.model_dir.load_model_dir`` returns; ``meta["parity"]`` is the report.

    Raises:
      UntranslatableError: an op without a Flax translation (named with its graph node).
      ParityError: logits differ beyond the tolerance; nothing is written.
    """
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    input_shape = (int(h), int(w), channels)
    mean, std = _resolve_normalization(normalize, channels)
    spec = graph_spec(module, input_shape)
    k = _torch_classes(module, input_shape)
    if num_classes is not None and int(num_classes) != k:
        raise ConfigError(f"num_classes={num_classes} but the module returns {k} logits.")
    meta = {
        "kind": "teacher",
        "arch": GRAPH_ARCH,
        "num_classes": k,
        "normalization": {"mean": list(mean), "std": list(std)},
        "input_shape": list(input_shape),
        "graph": spec,
        "source": source or type(module).__name__,
        **dict(extra or {}),
    }
    model = graph_teacher(meta)
    loaded = loaded_model(meta, _variables(module, spec, model, input_shape), model)
    report = parity(module, loaded)
    loaded.meta["parity"] = report
    print(parity_line(report), flush=True)
    if not report["passed"]:
        raise ParityError(
            f"the converted teacher does not match torch: {parity_line(report)}; nothing was "
            "written. An op translated wrongly: please report it with the model."
        )
    if out is not None:
        _save(out, loaded)
    return loaded


def _save(out, loaded: LoadedModel) -> None:
    """Writes a checked conversion as a model directory (its graph and parity in model.json)."""
    core = ("kind", "arch", "num_classes", "normalization", "input_shape")
    meta = loaded.meta
    save_model_dir(
        out,
        **{key: meta[key] for key in ("kind", "arch", "num_classes", "input_shape")},
        normalization=(meta["normalization"]["mean"], meta["normalization"]["std"]),
        variables=loaded.variables,
        extra={key: v for key, v in meta.items() if key not in core},
    )


def _torch_classes(module, input_shape) -> int:
    """K: the size of the module's output on one zero image."""
    import torch

    h, w, c = input_shape
    module.eval()
    with torch.no_grad():
        return int(module(torch.zeros(1, c, h, w)).shape[-1])


def _source_module(args):
    """The torch module the flags name, and its description for ``model.json``."""
    if args.torch_module:
        try:
            kwargs = json.loads(args.torch_kwargs)
        except json.JSONDecodeError as err:
            raise ConfigError(f"--torch_kwargs is not JSON ({err}).") from err
        if not isinstance(kwargs, dict):
            raise ConfigError(f"--torch_kwargs must be a JSON object, got {args.torch_kwargs!r}.")
        module = import_callable(args.torch_module, kwargs)
        return module, {"source": args.torch_module, "torch_kwargs": kwargs}
    name = args.arch[len(TORCHVISION_PREFIX) :]
    return torchvision_model(name, args.num_classes or 1000), {"source": args.arch}


def run_traced(args) -> Path:
    """``python -m stars_jax.convert`` for ``--arch torchvision/NAME`` and ``--torch_module``."""
    module, extra = _source_module(args)
    info = {}
    if args.checkpoint:
        ckpt = read_checkpoint(args.checkpoint, weights_only=not args.unsafe_pickle)
        load_weights(module, ckpt.state_dict)
        info = ckpt.info
        extra["source_checkpoint"] = str(Path(args.checkpoint).resolve())
    else:
        print("Notice: no --checkpoint; converting the module's own (random) weights.")
    mean, std, norm_source = parse_normalization(args.normalize, info)
    loaded = from_torch(
        module,
        image_size=args.image_size,
        normalize=(mean, std),
        num_classes=args.num_classes,
        out=args.out,
        source=extra.pop("source"),
        extra=extra,
    )
    n_params = sum(v.size for v in jax.tree_util.tree_leaves(loaded.variables["params"]))
    print(
        f"converted {loaded.meta['source']} ({n_params / 1e6:.2f} M params, "
        f"{loaded.meta['num_classes']} classes, {len(loaded.meta['graph']['nodes'])} graph "
        f"nodes) -> {args.out} [normalization: {norm_source}]"
    )
    return Path(args.out)
