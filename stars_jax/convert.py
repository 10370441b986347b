"""Convert a PyTorch teacher checkpoint into a ``stars_jax`` model directory.

    python -m stars_jax.convert --arch wrn40_2 --num_classes 10 \
        --checkpoint ../shared/teachers/cifar10_wrn40_2.pth --out workdirs/teachers/wrn40_2

Keys map generically because the Flax teachers name their modules after the PyTorch ones:
path segments are kept, a numeric segment is joined to its predecessor with ``_``
(``layer1.0.shortcut.1.running_mean`` -> ``batch_stats/layer1_0/shortcut_1/mean``), and leaves
map as conv weight ``[O, I, kh, kw]`` -> ``kernel [kh, kw, I, O]``, linear weight ``[O, I]`` ->
``kernel [I, O]``, 1-D (BatchNorm) weight -> ``scale``, ``running_mean/var`` -> ``mean/var``.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from stars_jax.apply import NORMALIZATION
from stars_jax.model_dir import save_model_dir
from stars_jax.models.teachers import TEACHERS, make_teacher

CIFAR10_MEAN, CIFAR10_STD = NORMALIZATION["cifar10"]
NAMED_NORMALIZATIONS = {"cifar10": (CIFAR10_MEAN, CIFAR10_STD), "none": ((0.0,) * 3, (1.0,) * 3)}
_IGNORED_LEAVES = ("num_batches_tracked",)
_HEAD_NAMES = ("linear", "fc", "classifier")
_BN_LEAVES = {"running_mean": "mean", "running_var": "var"}

FlatKey = tuple[str, ...]  # (collection, module, ..., leaf)


class Checkpoint(NamedTuple):
    """A PyTorch checkpoint: float32 numpy state dict plus the other top-level entries."""

    state_dict: dict[str, np.ndarray]
    info: dict[str, Any]  # e.g. {"arch", "epoch", "best_acc1", "normalize"} when present.


def _tensor_to_numpy(t) -> np.ndarray:
    """A torch tensor as numpy; float16 / bfloat16 upcast to float32 (numpy has no bf16)."""
    t = t.detach().cpu()
    if t.is_floating_point():
        t = t.float()
    return t.numpy()


def read_checkpoint(path: str | Path, *, weights_only: bool = True) -> Checkpoint:
    """Reads a ``torch.save`` file holding ``{"state_dict": ...}`` or a bare state dict.

    Args:
      path: the ``.pth`` file.
      weights_only: passed to ``torch.load``; keep True unless the file is trusted and pickles
        more than tensors and plain containers (``weights_only=False`` runs arbitrary pickle code).

    Returns:
      A ``Checkpoint`` with ``module.`` (DataParallel) prefixes stripped from the keys.
    """
    import torch  # Lazy: only conversion needs PyTorch.

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}.")
    with path.open("rb") as f:
        magic = f.read(2)
    # torch.save writes a zip archive (PK) or, in the legacy format, a pickle (0x80 protocol).
    if not (magic == b"PK" or magic[:1] == b"\x80"):
        raise ValueError(
            f"{path} is not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle); "
            "pass the .pth file written by torch.save."
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as e:  # torch raises many types (UnpicklingError, RuntimeError, EOFError).
        hint = (
            " It pickles more than tensors; if you trust the file, pass --unsafe_pickle."
            if "Weights only load failed" in str(e)
            else ""
        )
        raise ValueError(
            f"{path} is not a PyTorch checkpoint readable by torch.load: {e}{hint}"
        ) from e
    info: dict[str, Any] = {}
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        info = {k: v for k, v in obj.items() if k != "state_dict"}
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(
            f"{path} holds a {type(obj).__name__}, not a state dict or {{'state_dict': ...}}."
        )
    if bad := [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]:
        raise ValueError(
            f"{path} is not a state dict: entries {bad[:5]} are not tensors (top-level keys: "
            f"{list(obj)[:5]}); expected {{name: tensor}} or {{'state_dict': {{name: tensor}}}}."
        )
    state_dict = {}
    for key, value in obj.items():
        while key.startswith("module."):  # nn.DataParallel / DistributedDataParallel wrappers.
            key = key[len("module.") :]
        state_dict[key] = _tensor_to_numpy(value)
    return Checkpoint(state_dict, info)


def load_torch_checkpoint(path: str | Path, *, weights_only: bool = True) -> dict[str, np.ndarray]:
    """The float32 numpy state dict of a PyTorch checkpoint (see ``read_checkpoint``)."""
    return read_checkpoint(path, weights_only=weights_only).state_dict


def torch_key_to_flax(key: str, value: np.ndarray) -> tuple[FlatKey, np.ndarray] | None:
    """Maps one state-dict entry to ``((collection, *module_path, leaf), array)``.

    Returns None for entries that carry no model state (``num_batches_tracked``).
    """
    *modules, leaf = key.split(".")
    if leaf in _IGNORED_LEAVES:
        return None
    path: list[str] = []
    for seg in modules:
        # Sequential / ModuleList indices become part of the module name: layer1.0 -> layer1_0.
        if seg.isdigit() and path:
            path[-1] = f"{path[-1]}_{seg}"
        else:
            path.append(seg)
    if leaf in _BN_LEAVES:
        return ("batch_stats", *path, _BN_LEAVES[leaf]), value
    if leaf == "bias":
        return ("params", *path, "bias"), value
    if leaf == "weight":
        if value.ndim == 4:  # Conv [O, I, kh, kw] -> [kh, kw, I, O].
            return ("params", *path, "kernel"), value.transpose(2, 3, 1, 0)
        if value.ndim == 2:  # Linear [O, I] -> [I, O].
            return ("params", *path, "kernel"), value.T
        if value.ndim == 1:  # BatchNorm affine weight.
            return ("params", *path, "scale"), value
    return ("params", *path, leaf), value  # Unknown leaf: reported as unexpected if no match.


def expected_shapes(arch: str, num_classes: int, input_shape=(32, 32, 3)) -> dict[FlatKey, tuple]:
    """Flat ``{(collection, *path, leaf): shape}`` of the Flax teacher's params and batch_stats."""
    model = make_teacher(arch, num_classes)
    tree = jax.eval_shape(
        functools.partial(model.init, train=False),
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, *input_shape), jnp.float32),
    )
    flat = {}
    for col in ("params", "batch_stats"):
        for kp, leaf in jax.tree_util.tree_leaves_with_path(tree.get(col, {})):
            flat[(col, *(k.key for k in kp))] = tuple(leaf.shape)
    return flat


def _unflatten(flat: Mapping[FlatKey, np.ndarray]) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        for k in key[:-1]:
            node = node.setdefault(k, {})
        node[key[-1]] = value
    return tree


def _fmt(key: FlatKey) -> str:
    return "/".join(key)


def _mismatch_hint(
    wrong: Sequence[FlatKey], got: Mapping, want: Mapping, arch: str, source_arch: str | None
) -> str:
    hints = []
    if source_arch and source_arch != arch:
        hints.append(f"is --arch right? the checkpoint's arch field says {source_arch!r}")
    for key in wrong:
        if key[1] in _HEAD_NAMES and key[-1] == "kernel" and got[key][0] == want[key][0]:
            hints.append(
                f"the checkpoint head {key[1]!r} has {got[key][1]} outputs but "
                f"--num_classes={want[key][1]}; pass --num_classes {got[key][1]}"
            )
    if not hints:
        hints.append(f"is --arch right? (valid: {sorted(TEACHERS)})")
    return "Hint: " + "; ".join(hints) + "."


def convert_state_dict(
    state_dict: Mapping[str, np.ndarray],
    arch: str,
    num_classes: int,
    *,
    input_shape: Sequence[int] = (32, 32, 3),
    source_arch: str | None = None,
) -> dict:
    """Converts a PyTorch state dict into the Flax teacher's variables.

    Args:
      state_dict: ``{torch key: array}`` (e.g. from ``load_torch_checkpoint``).
      arch: teacher registry name.
      num_classes: K.
      input_shape: ``(H, W, C)``; parameter shapes do not depend on H, W for these archs.
      source_arch: the checkpoint's own ``arch`` field, used only to hint on a mismatch.

    Returns:
      ``{"params": ..., "batch_stats": ...}`` of float32 numpy arrays.

    Raises:
      ValueError: listing every missing, unexpected and wrongly shaped key.
    """
    converted: dict[FlatKey, np.ndarray] = {}
    torch_names: dict[FlatKey, str] = {}
    for key, value in state_dict.items():
        mapped = torch_key_to_flax(key, np.asarray(value))
        if mapped is not None:
            converted[mapped[0]] = mapped[1]
            torch_names[mapped[0]] = key
    want = expected_shapes(arch, num_classes, tuple(input_shape))
    got = {k: tuple(v.shape) for k, v in converted.items()}
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    if missing or unexpected or wrong:
        lines = [f"State dict does not match {arch} with num_classes={num_classes}:"]
        lines += [f"  missing ({len(missing)}): {', '.join(map(_fmt, missing))}"] if missing else []
        if unexpected:
            names = ", ".join(f"{torch_names[k]} (-> {_fmt(k)})" for k in unexpected)
            lines.append(f"  unexpected ({len(unexpected)}): {names}")
        if wrong:
            shapes = ", ".join(
                f"{torch_names[k]} (-> {_fmt(k)}): checkpoint {got[k]} vs model {want[k]} "
                "(Flax layout)"
                for k in wrong
            )
            lines.append(f"  wrong shape ({len(wrong)}): {shapes}")
        lines.append(_mismatch_hint(wrong, got, want, arch, source_arch))
        raise ValueError("\n".join(lines))
    return _unflatten({k: v.astype(np.float32) for k, v in converted.items()})


def parse_normalization(spec: str | None, info: Mapping, channels: int = 3):
    """Resolves ``--normalize`` to ``((mean), (std), source description)``.

    ``spec`` is ``cifar10``, ``none``, ``m1,..,mC,s1,..,sC`` or None (use the checkpoint's
    ``normalize`` entry, else CIFAR-10's statistics).
    """
    if spec is None:
        norm = info.get("normalize")
        if isinstance(norm, Mapping) and {"mean", "std"} <= set(norm):
            return tuple(map(float, norm["mean"])), tuple(map(float, norm["std"])), "checkpoint"
        print(
            "Notice: the checkpoint has no 'normalize' entry; assuming CIFAR-10 mean/std "
            "(pass --normalize to override).",
            file=sys.stderr,
        )
        return CIFAR10_MEAN, CIFAR10_STD, "default cifar10"
    if spec in NAMED_NORMALIZATIONS:
        return (*NAMED_NORMALIZATIONS[spec], f"--normalize {spec}")
    try:
        values = [float(v) for v in spec.split(",")]
    except ValueError:
        values = []
    if len(values) != 2 * channels:
        raise ValueError(
            f"--normalize {spec!r} is not understood; use one of {sorted(NAMED_NORMALIZATIONS)} "
            f"or {2 * channels} comma-separated numbers (the {channels} means, then the stds)."
        )
    return tuple(values[:channels]), tuple(values[channels:]), "--normalize values"


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m stars_jax.convert", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--arch", required=True, choices=sorted(TEACHERS))
    p.add_argument("--num_classes", required=True, type=int)
    p.add_argument("--checkpoint", required=True, type=Path, help="PyTorch .pth file")
    p.add_argument("--out", required=True, type=Path, help="model directory to write")
    p.add_argument(
        "--normalize",
        default=None,
        help="cifar10 | none | m1,m2,m3,s1,s2,s3 (default: the checkpoint's, else cifar10)",
    )
    p.add_argument("--image_size", type=int, default=32, help="input height = width in pixels")
    p.add_argument("--unsafe_pickle", action="store_true", help="torch.load(weights_only=False)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> Path:
    """CLI entry point; returns the written model directory."""
    args = _parse_args(argv)
    ckpt = read_checkpoint(args.checkpoint, weights_only=not args.unsafe_pickle)
    source_arch = ckpt.info.get("arch")
    input_shape = (args.image_size, args.image_size, 3)
    variables = convert_state_dict(
        ckpt.state_dict,
        args.arch,
        args.num_classes,
        input_shape=input_shape,
        source_arch=str(source_arch) if source_arch is not None else None,
    )
    mean, std, norm_source = parse_normalization(args.normalize, ckpt.info)
    # Keep the checkpoint's scalar metadata (epoch, best_acc1, arch, note) for provenance.
    source_info = {k: v for k, v in ckpt.info.items() if isinstance(v, str | int | float)}
    out = save_model_dir(
        args.out,
        kind="teacher",
        arch=args.arch,
        num_classes=args.num_classes,
        variables=variables,
        normalization=(mean, std),
        input_shape=input_shape,
        extra={"source_checkpoint": str(args.checkpoint.resolve()), "source_info": source_info},
    )
    n_params = sum(v.size for v in jax.tree_util.tree_leaves(variables["params"]))
    print(
        f"converted {args.arch} ({n_params / 1e6:.2f} M params, {args.num_classes} classes) "
        f"from {args.checkpoint} -> {out} [normalization: {norm_source}]"
    )
    return out


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as err:  # Bad input: the message is the report.
        sys.exit(f"error: {err}")
