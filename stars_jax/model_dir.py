"""Self-describing model directories: ``model.json`` (what the model is) + ``variables.msgpack``.

A model directory holds everything needed to rebuild and run a teacher or student without the
code that produced it::

    model.json         {"kind", "arch", "num_classes", "normalization": {"mean", "std"},
                        "input_shape": [H, W, C], "stars_jax_version", ...extra}
    variables.msgpack  flax msgpack of a float32 numpy tree {"params", "batch_stats"}

Create one from a PyTorch checkpoint with ``python -m stars_jax.convert``. A teacher of arch
``graph`` (converted from a torchvision model or any traceable PyTorch CNN) also stores
``"graph"``, the spec its Flax module is rebuilt from (``stars_jax.models.graph``), and
``"parity"``, the conversion's check against PyTorch.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

import stars_jax
from stars_jax.apply import logits_fn
from stars_jax.errors import ConfigError, InputError, MissingInputError
from stars_jax.models.graph import GRAPH_ARCH

META_FILE = "model.json"
VARIABLES_FILE = "variables.msgpack"
KINDS = ("teacher", "student")
COLLECTIONS = ("params", "batch_stats")  # What a model directory stores; never intermediates.
_HOW_TO_CREATE = (
    "Create one with `python -m stars_jax.convert --arch ARCH --num_classes N "
    "--checkpoint IN.pth --out DIR` (teachers) or by a distillation run (students)."
)
_HOW_TO_REWRITE = (
    "write the directory again (teachers: `python -m stars_jax.convert ... --overwrite`; "
    "students: rerun the distillation that exported it)."
)
_CORE_KEYS = ("kind", "arch", "num_classes", "normalization", "input_shape")
_REQUIRED_KEYS = {"teacher": _CORE_KEYS, "student": (*_CORE_KEYS, "time_steps", "lif")}


class LoadedModel(NamedTuple):
    """A model directory, loaded.

    Attributes:
      meta: the parsed ``model.json``.
      variables: ``{"params": ..., "batch_stats": ...}`` as numpy float32 arrays.
      model: the Flax module (teacher or student) that ``variables`` belong to.
      logits: ``(variables, x [B, H, W, C]) -> logits [B, K]`` (``apply.logits_fn``): what
        ``stars_jax.evaluate`` runs.
      predict: ``x [B, H, W, C]`` (uint8 in [0, 255] or float in [0, 1]) -> ``logits [B, K]``;
        normalises, and for students averages the per-step logits over time. It is a
        ``jax.tree_util.Partial`` over a jitted function with the variables as its bound
        argument, so jitting a caller of it passes the weights as arguments instead of baking
        them into the program as constants.
    """

    meta: dict
    variables: dict
    model: nn.Module
    logits: Callable
    predict: Callable[[jax.Array], jax.Array]


def _to_numpy_f32(tree: Mapping) -> dict:
    """Copies a variables tree to numpy, floating leaves as float32 (bf16/fp16 are upcast)."""

    def leaf(x):
        x = np.asarray(x)
        return x.astype(np.float32) if np.issubdtype(x.dtype, np.floating) else x

    return jax.tree_util.tree_map(leaf, serialization.to_state_dict(dict(tree)))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` via a temp file in the same directory and ``os.replace``.

    A reader never sees a half-written file, even if this process is killed mid-write.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual file mode.
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_model_dir(
    path: str | os.PathLike,
    *,
    kind: str,
    arch: str,
    num_classes: int,
    variables: Mapping,
    normalization: tuple[Sequence[float], Sequence[float]],
    input_shape: Sequence[int],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Writes a model directory (created with parents; existing files are replaced atomically).

    Args:
      path: the directory.
      kind: ``"teacher"`` or ``"student"``.
      arch: registry name (``stars_jax.models.teachers.TEACHERS`` or the students' registry).
      num_classes: K, the number of logits.
      variables: a tree with ``"params"`` and usually ``"batch_stats"``; other collections
        (e.g. ``intermediates``) are dropped.
      normalization: ``(mean [C], std [C])`` applied to inputs scaled to [0, 1].
      input_shape: ``(H, W, C)`` of one input image.
      extra: more JSON-serialisable metadata (source checkpoint, ``time_steps``, ``lif`` ...).

    Returns:
      The directory path.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
    if "params" not in variables:
        raise ValueError(f"variables must contain 'params'; got collections {sorted(variables)}.")
    mean, std = (tuple(float(v) for v in s) for s in normalization)
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (H, W, C), got {tuple(input_shape)}.")
    if not len(mean) == len(std) == input_shape[-1]:
        raise ConfigError(
            f"normalization mean {mean} / std {std} must have one value per input channel "
            f"(C = {input_shape[-1]})."
        )
    if min(std) <= 0:
        raise ConfigError(f"normalization std must be > 0, got {std}.")
    reserved = {"kind", "arch", "num_classes", "normalization", "input_shape"}
    if clash := reserved & set(extra or {}):
        raise ValueError(f"extra must not override the core fields {sorted(clash)}.")
    meta = {
        "kind": kind,
        "arch": arch,
        "num_classes": int(num_classes),
        "normalization": {"mean": list(mean), "std": list(std)},
        "input_shape": [int(s) for s in input_shape],
        "stars_jax_version": stars_jax.__version__,
        **dict(extra or {}),
    }
    tree = _to_numpy_f32({k: v for k, v in variables.items() if k in COLLECTIONS})
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    # Variables first, model.json last: a directory with a model.json is complete.
    atomic_write(path / VARIABLES_FILE, serialization.msgpack_serialize(tree))
    atomic_write(path / META_FILE, (json.dumps(meta, indent=2) + "\n").encode())
    return path


def check_model_dir(meta: Mapping, arch: str | None = None, num_classes: int | None = None):
    """Raises InputError when a loaded directory is not the expected ``arch`` / ``num_classes``."""
    if arch is not None and meta["arch"] != arch:
        raise InputError(
            f"Model directory holds arch {meta['arch']!r} but {arch!r} was expected; "
            "point to the right directory or change the expected arch."
        )
    if num_classes is not None and int(meta["num_classes"]) != int(num_classes):
        raise InputError(
            f"Model directory has num_classes={meta['num_classes']} but {num_classes} was "
            "expected; point to the right directory or change num_classes."
        )


def build_model(meta: Mapping, dtype: Any = jnp.float32) -> nn.Module:
    """The Flax module described by ``meta`` (teacher or student).

    Raises:
      InputError: when ``meta`` names an unknown kind or arch, or invalid student settings.
    """
    if meta["kind"] not in KINDS:
        raise InputError(f"model.json kind must be one of {KINDS}, got {meta['kind']!r}.")
    try:
        if meta["kind"] == "teacher" and meta["arch"] == GRAPH_ARCH:
            return graph_teacher(meta, dtype)
        if meta["kind"] == "teacher":
            from stars_jax.models.teachers import make_teacher

            return make_teacher(meta["arch"], meta["num_classes"], dtype)
        # Lazy: students pull in the neuron code, which teacher-only users do not need.
        from stars_jax.models.students import make_student
        from stars_jax.neurons import LIFParams

        return make_student(
            meta["arch"],
            meta["num_classes"],
            time_steps=meta["time_steps"],
            lif=LIFParams(**meta["lif"]),
        )
    except (ValueError, TypeError) as err:  # Unknown arch, bad time_steps or lif fields.
        raise InputError(
            f"model.json describes a {meta['kind']} that cannot be built ({err}); fix "
            f"model.json or {_HOW_TO_REWRITE}"
        ) from err


def graph_teacher(meta: Mapping, dtype: Any = jnp.float32) -> nn.Module:
    """The teacher that ``meta["graph"]``, a ``stars_jax.models.graph`` spec, describes."""
    from stars_jax.models.graph import SPEC_VERSION, GraphTeacher

    spec = meta.get("graph")
    if not isinstance(spec, dict) or spec.get("version") != SPEC_VERSION:
        raise ValueError(
            f"a '{GRAPH_ARCH}' teacher needs a 'graph' spec of version {SPEC_VERSION} in "
            f"model.json, got {type(spec).__name__} version "
            f"{spec.get('version') if isinstance(spec, dict) else None}"
        )
    return GraphTeacher(json.dumps(spec), int(meta["num_classes"]), dtype)


def make_predict(logits: Callable, variables: Mapping) -> Callable:
    """``predict(x [B, H, W, C]) -> logits [B, K]``: ``logits`` jitted, with ``variables`` bound.

    Returns a ``jax.tree_util.Partial`` whose bound argument is ``variables``: callers that jit
    through it get the weights as jit arguments, not constants.
    """
    # On the device once, rather than copied from host memory on every call.
    return jax.tree_util.Partial(jax.jit(logits), jax.device_put(variables))


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise MissingInputError(f"{what} not found: {path}. {_HOW_TO_CREATE}")


def _read_meta(file: Path) -> dict:
    """Parses ``model.json`` and checks the keys that rebuilding the model needs."""
    try:
        meta = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(
            f"{file} is not valid JSON ({err}); it is truncated or was edited by hand: fix it "
            f"or {_HOW_TO_REWRITE}"
        ) from err
    if not isinstance(meta, dict):
        raise InputError(
            f"{file} holds a JSON {type(meta).__name__}, not an object; {_HOW_TO_REWRITE}"
        )
    if meta.get("kind") not in KINDS:
        raise InputError(
            f"{file}: 'kind' must be one of {KINDS}, got {meta.get('kind')!r}; fix it or "
            f"{_HOW_TO_REWRITE}"
        )
    if missing := [k for k in _REQUIRED_KEYS[meta["kind"]] if k not in meta]:
        raise InputError(
            f"{file} lacks {missing}, which a {meta['kind']} directory needs; {_HOW_TO_REWRITE}"
        )
    norm, shape = meta["normalization"], meta["input_shape"]
    if not (isinstance(norm, dict) and {"mean", "std"} <= set(norm)):
        raise InputError(
            f"{file}: 'normalization' must hold 'mean' and 'std' lists, got {norm!r}; fix it "
            f"or {_HOW_TO_REWRITE}"
        )
    if not (isinstance(shape, list) and len(shape) == 3):
        raise InputError(
            f"{file}: 'input_shape' must be [H, W, C], got {shape!r}; fix it or {_HOW_TO_REWRITE}"
        )
    return meta


def _read_variables(file: Path) -> dict:
    """Restores ``variables.msgpack``; a truncated or corrupt file names itself."""
    try:
        variables = serialization.msgpack_restore(file.read_bytes())
    except Exception as err:  # msgpack and flax's array decoding raise many types: a bad file.
        raise InputError(
            f"{file} cannot be read as flax msgpack ({type(err).__name__}: {err}); it is "
            f"truncated or corrupt: {_HOW_TO_REWRITE}"
        ) from err
    if not isinstance(variables, dict) or "params" not in variables:
        got = sorted(variables) if isinstance(variables, dict) else type(variables).__name__
        raise InputError(f"{file} holds {got}, not a tree with 'params'; {_HOW_TO_REWRITE}")
    return variables


def _check_variables(model: nn.Module, meta: Mapping, variables: Mapping, path: Path) -> None:
    """Raises InputError if the stored tree does not fit the module described by ``meta``."""
    h, w, c = meta["input_shape"]
    expected = jax.eval_shape(
        functools.partial(model.init, train=False),
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, h, w, c), jnp.float32),
    )
    want = {
        jax.tree_util.keystr(k): tuple(v.shape)
        for k, v in jax.tree_util.tree_leaves_with_path(
            {col: expected[col] for col in COLLECTIONS if col in expected}
        )
    }
    got = {
        jax.tree_util.keystr(k): tuple(np.shape(v))
        for k, v in jax.tree_util.tree_leaves_with_path(variables)
    }
    if want != got:
        bad = sorted(set(want) ^ set(got)) + sorted(
            k for k in set(want) & set(got) if want[k] != got[k]
        )
        raise InputError(
            f"{path / VARIABLES_FILE} does not match {meta['kind']} arch {meta['arch']!r} with "
            f"num_classes={meta['num_classes']} (differing entries: {bad[:10]}"
            f"{' ...' if len(bad) > 10 else ''}); the directory is corrupt or model.json is "
            f"wrong: {_HOW_TO_REWRITE}"
        )


def load_model_dir(
    path: str | os.PathLike,
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    validate: bool = True,
) -> LoadedModel:
    """Loads a model directory written by ``save_model_dir``.

    Args:
      path: the directory.
      arch, num_classes: if given, checked against ``model.json`` (InputError on mismatch).
      validate: check the stored variables' tree and shapes against the rebuilt module.

    Returns:
      A ``LoadedModel``.

    Raises:
      MissingInputError: the directory or one of its two files is absent.
      InputError: naming the file that is unreadable (bad JSON, a missing key, a truncated
        msgpack) or does not fit the model.
    """
    path = Path(path)
    if not path.is_dir():
        raise MissingInputError(f"Model directory not found: {path}. {_HOW_TO_CREATE}")
    _require_file(path / META_FILE, "Model metadata")
    _require_file(path / VARIABLES_FILE, "Model variables")
    meta = _read_meta(path / META_FILE)
    check_model_dir(meta, arch, num_classes)
    model = build_model(meta)
    variables = _read_variables(path / VARIABLES_FILE)
    if validate:
        _check_variables(model, meta, variables, path)
    return loaded_model(meta, variables, model)


def loaded_model(meta: Mapping, variables: Mapping, model: nn.Module | None = None) -> LoadedModel:
    """A ``LoadedModel`` from a ``model.json`` dict and its variables, e.g. of a model that
    is in memory and not (yet) in a directory."""
    model = build_model(meta) if model is None else model
    norm = meta["normalization"]
    logits = logits_fn(model, meta["kind"], tuple(norm["mean"]), tuple(norm["std"]))
    return LoadedModel(dict(meta), variables, model, logits, make_predict(logits, variables))
