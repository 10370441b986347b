r"""Convert a PyTorch teacher checkpoint into a ``stars_jax`` model directory.

    python -m stars_jax.convert --arch wrn40_2 --num_classes 10 \
        --checkpoint ../shared/teachers/cifar10_wrn40_2.pth --out workdirs/teachers/wrn40_2

Keys map generically because the Flax teachers name their modules after the PyTorch ones:
path segments are kept, a numeric segment is joined to its predecessor with ``_``
(``layer1.0.shortcut.1.running_mean`` -> ``batch_stats/layer1_0/shortcut_1/mean``), and leaves
map as conv weight ``[O, I, kh, kw]`` -> ``kernel [kh, kw, I, O]``, linear weight ``[O, I]`` ->
``kernel [I, O]``, 1-D (BatchNorm) weight -> ``scale``, ``running_mean/var`` -> ``mean/var``.
"""

from __future__ import annotations

import functools
import os
import pickle
import re
import sys
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from stars_jax import cli
from stars_jax.apply import NORMALIZATION
from stars_jax.errors import ConfigError, InputError, MissingInputError
from stars_jax.model_dir import save_model_dir
from stars_jax.models.teachers import TEACHERS, make_teacher

CIFAR10_MEAN, CIFAR10_STD = NORMALIZATION["cifar10"]
# torchvision's ImageNet statistics, which its pretrained classifiers expect.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
NAMED_NORMALIZATIONS = {
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "none": ((0.0,) * 3, (1.0,) * 3),
}
TORCHVISION_PREFIX = "torchvision/"
_IGNORED_LEAVES = ("num_batches_tracked",)
_HEAD_NAMES = ("linear", "fc", "classifier")
_BN_LEAVES = {"running_mean": "mean", "running_var": "var"}
# torch's weights-only unpickler refusing an object for safety (as opposed to unreadable bytes).
_UNSAFE_PICKLE = re.compile(
    r"GLOBAL \S+ (?:was not an allowed global|whose module \S+ is blocked)"
    r"|reduce for unrecognized function [^\n]*|Can only (?:create new object|build) [^\n]*"
)

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


def _is_torch_file(path: Path) -> bool:
    """Whether ``path`` has the layout of a ``torch.save`` file: a zip archive with a
    ``data.pkl`` (or ``<name>/data.pkl``) entry, or a legacy pickle opening with PROTO 2..5."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            return False
        return any(n == "data.pkl" or n.endswith("/data.pkl") for n in names)
    with path.open("rb") as f:
        head = f.read(2)
    return len(head) == 2 and head[0] == pickle.PROTO[0] and 2 <= head[1] <= 5


def _first_line(err: Exception) -> str:
    """torch's own reason for a failed load, without its multi-paragraph advice."""
    text = str(err).split("WeightsUnpickler error:", 1)[-1]
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), type(err).__name__)


def _torch_load(path: Path, weights_only: bool):
    """``torch.load`` on CPU; its failures become one ``InputError`` that suggests
    ``--unsafe_pickle`` only when the safe loader refused a pickled object."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as e:  # torch raises many types (UnpicklingError, RuntimeError, EOFError).
        refused = _UNSAFE_PICKLE.search(str(e)) if weights_only else None
        if isinstance(e, pickle.UnpicklingError) and refused:
            raise InputError(
                f"{path} pickles objects beyond tensors and plain containers, which the safe "
                f"loader refuses ({refused.group(0)}). Re-save only the state dict "
                "(torch.save(model.state_dict(), path)), or pass --unsafe_pickle, which runs "
                "arbitrary code from the file: only for files you trust."
            ) from e
        raise InputError(
            f"{path} looks like a torch.save file but torch.load cannot read it "
            f"({type(e).__name__}: {_first_line(e)}); it is truncated or corrupt: copy or "
            "export it again."
        ) from e


def read_checkpoint(path: str | Path, *, weights_only: bool = True) -> Checkpoint:
    """Reads a ``torch.save`` file holding ``{"state_dict": ...}`` or a bare state dict.

    Args:
      path: the ``.pth`` file.
      weights_only: passed to ``torch.load``; keep True unless the file is trusted and pickles
        more than tensors and plain containers (``weights_only=False`` runs arbitrary pickle code).

    Returns:
      A ``Checkpoint`` with ``module.`` (DataParallel) prefixes stripped from the keys.

    Raises:
      MissingInputError: no file at ``path``.
      InputError: the file is not a ``torch.save`` file, is truncated, holds no state dict, or
        (only then suggesting ``--unsafe_pickle``) pickles objects the safe loader refuses.
    """
    import torch  # Lazy: only conversion needs PyTorch.

    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"Checkpoint not found: {path}.")
    if not _is_torch_file(path):
        raise InputError(
            f"{path} is not a PyTorch checkpoint (neither a torch.save zip archive holding "
            "data.pkl nor a legacy torch.save pickle); pass the .pth file written by torch.save, "
            "or copy it again if it was one and is now truncated."
        )
    obj = _torch_load(path, weights_only)
    info: dict[str, Any] = {}
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        info = {k: v for k, v in obj.items() if k != "state_dict"}
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise InputError(
            f"{path} holds a {type(obj).__name__}, not a state dict or {{'state_dict': ...}}."
        )
    if bad := [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]:
        raise InputError(
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
      InputError: listing every missing, unexpected and wrongly shaped key.
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
        raise InputError("\n".join(lines))
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
        raise ConfigError(
            f"--normalize {spec!r} is not understood; use one of {sorted(NAMED_NORMALIZATIONS)} "
            f"or {2 * channels} comma-separated numbers (the {channels} means, then the stds)."
        )
    return tuple(values[:channels]), tuple(values[channels:]), "--normalize values"


PROG = "python -m stars_jax.convert"
USAGE = (
    f"{PROG} (--arch=ARCH --num_classes=K --checkpoint=FILE.pth | --arch=torchvision/NAME "
    "[--num_classes=K] [--checkpoint=FILE.pth] | --torch_module=PKG.MODULE:CALLABLE "
    "[--torch_kwargs=JSON] [--checkpoint=FILE.pth]) --out=DIR [--image_size=N] [--overwrite]"
)


_NORMALIZE_HELP = (
    "cifar10 | imagenet | none | m1,m2,m3,s1,s2,s3 (default: the checkpoint's, else cifar10)."
)
_ARCH_HELP = (
    f"Teacher architecture: one of {sorted(a for a in TEACHERS if a != 'graph')} (data-free-KD "
    "key names), or torchvision/NAME (e.g. torchvision/resnet18), traced and checked."
)
_MODULE_HELP = (
    "PKG.MODULE:CALLABLE returning your torch.nn.Module (traced with torch.fx, checked "
    "against torch); its package must be importable."
)
_OVERWRITE_HELP = "Write into a non-empty --out, replacing its model.json and variables.msgpack."


def define_flags(fv: flags.FlagValues) -> None:
    """The CLI's flags (``stars_jax.cli``)."""
    flags.DEFINE_string("arch", None, _ARCH_HELP, flag_values=fv)
    flags.DEFINE_integer("num_classes", None, "Classes K.", lower_bound=1, flag_values=fv)
    flags.DEFINE_string(
        "checkpoint",
        None,
        "PyTorch .pth file (for torchvision/ and --torch_module: optional, else random weights).",
        flag_values=fv,
    )
    flags.DEFINE_string("torch_module", None, _MODULE_HELP, flag_values=fv)
    flags.DEFINE_string(
        "torch_kwargs", "{}", "JSON keyword arguments for --torch_module.", flag_values=fv
    )
    flags.DEFINE_string("out", None, "Model directory to write.", flag_values=fv)
    flags.DEFINE_string("normalize", None, _NORMALIZE_HELP, flag_values=fv)
    flags.DEFINE_integer(
        "image_size", 32, "Input height = width in pixels.", lower_bound=1, flag_values=fv
    )
    flags.DEFINE_bool(
        "unsafe_pickle",
        False,
        "torch.load(weights_only=False): runs arbitrary code from the file; only for "
        "checkpoints you trust.",
        flag_values=fv,
    )
    flags.DEFINE_bool("overwrite", False, _OVERWRITE_HELP, flag_values=fv)
    flags.DEFINE_bool("debug", False, cli.DEBUG_HELP, flag_values=fv)
    flags.mark_flags_as_required(["out"], flag_values=fv)


def _check_out(out: Path, overwrite: bool) -> None:
    """Raises InputError unless a model directory can be written at ``out``: it must not be a
    file, a non-empty directory (unless ``overwrite``) or below a path that cannot be written.
    Checked before the conversion, which takes a while, and without creating anything."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; pass a directory path (new or empty).")
    try:
        if out.is_dir() and any(out.iterdir()) and not overwrite:
            raise InputError(
                f"--out {out} is not empty; pass --overwrite to replace its model files, or "
                "choose a new directory."
            )
    except PermissionError as e:
        raise InputError(f"cannot read --out {out} ({e.strerror}); pass another directory.") from e
    base = next(p for p in (out.absolute(), *out.absolute().parents) if p.exists())
    if not base.is_dir():
        raise InputError(f"cannot create --out {out}: {base} is a file; pass another path.")
    if not os.access(base, os.W_OK | os.X_OK):
        raise InputError(f"cannot write to --out {out}: {base} is not writable; pass another path.")


def from_torch(module, **kwargs):
    """A PyTorch CNN in memory as a teacher, checked against torch: see
    ``stars_jax.torch_teacher.from_torch`` (``image_size``, ``normalize``, ``num_classes``,
    ``out``). Returns what ``stars_jax.model_dir.load_model_dir`` returns."""
    from stars_jax.torch_teacher import from_torch as _from_torch

    return _from_torch(module, **kwargs)


def _check_source_flags(args: flags.FlagValues) -> None:
    """One source: a registered --arch with --num_classes and --checkpoint, torchvision/NAME,
    or --torch_module."""
    if bool(args.arch) == bool(args.torch_module):
        raise ConfigError("pass exactly one of --arch and --torch_module.")
    if args.torch_module or (args.arch or "").startswith(TORCHVISION_PREFIX):
        if args.torch_module and args.num_classes is not None:
            print("Notice: --num_classes is checked against the module's output.", file=sys.stderr)
        return
    if args.arch not in TEACHERS or args.arch == "graph":
        raise ConfigError(
            f"--arch {args.arch!r} is not known; valid: {sorted(set(TEACHERS) - {'graph'})} "
            f"or {TORCHVISION_PREFIX}NAME."
        )
    if missing := [f"--{k}" for k in ("num_classes", "checkpoint") if args[k].value is None]:
        raise ConfigError(f"--arch {args.arch} needs {' and '.join(missing)}.")


def main(argv: Sequence[str] | None = None) -> Path:
    """CLI entry point (``argv`` with or without the program name); returns the written
    model directory."""
    return run(cli.parse(define_flags, argv, PROG))


def run(args: flags.FlagValues) -> Path:
    """Converts as the parsed flags say; returns the written model directory."""
    _check_source_flags(args)
    _check_out(Path(args.out), args.overwrite)
    if args.torch_module or (args.arch or "").startswith(TORCHVISION_PREFIX):
        from stars_jax.torch_teacher import run_traced  # Lazy: it imports torch

        return run_traced(args)
    out_dir, checkpoint = Path(args.out), Path(args.checkpoint)
    ckpt = read_checkpoint(checkpoint, weights_only=not args.unsafe_pickle)
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
    try:
        out = save_model_dir(
            out_dir,
            kind="teacher",
            arch=args.arch,
            num_classes=args.num_classes,
            variables=variables,
            normalization=(mean, std),
            input_shape=input_shape,
            extra={"source_checkpoint": str(checkpoint.resolve()), "source_info": source_info},
        )
    except OSError as e:  # E.g. a read-only file system or a full disk, found only on writing.
        raise InputError(f"cannot write to --out {args.out} ({e.strerror or e}).") from e
    n_params = sum(v.size for v in jax.tree_util.tree_leaves(variables["params"]))
    print(
        f"converted {args.arch} ({n_params / 1e6:.2f} M params, {args.num_classes} classes) "
        f"from {args.checkpoint} -> {out} [normalization: {norm_source}]"
    )
    return out


if __name__ == "__main__":
    cli.run_main(define_flags, run, USAGE)
