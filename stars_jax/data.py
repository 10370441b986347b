"""Dataset loaders in pure numpy returning in-memory arrays: images uint8 NHWC, labels int32.

A file that cannot be decoded (a truncated JPEG, a corrupt archive or pickle) stops the load
with an ``InputError`` naming it, rather than being skipped: a silently smaller dataset would
change results without a word.

``limit`` (all loaders but ``load_tfds``, which takes the first N) picks a deterministic,
class-balanced subset: the first sample of every class, then the second of every class, and so
on, in the dataset's own order; the subset keeps that order. limit=20 on 10 classes: 2 each.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import lzma
import os
import pickle
import re
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from stars_jax.errors import ConfigError, InputError, MissingInputError


class Dataset(NamedTuple):
    """An in-memory labelled image set.

    Attributes:
        images: uint8 ``[N, H, W, C]``, C=1 for grey and 3 for RGB.
        labels: int32 ``[N]``, indices into ``class_names``.
        class_names: one name per class, in label order.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DIGIT_CLASSES = tuple(str(d) for d in range(10))

_IMAGE_FOLDER_LAYOUT = "<root>/{train,test}/<class name>/*.jpg|*.jpeg|*.png"
_CIFAR_LAYOUT = (
    "cifar-10-python.tar.gz or cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}, "
    "or cifar-100-python.tar.gz or cifar-100-python/{train,test,meta}"
)
_IDX_LAYOUT = "<dir>/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]"
_TINY_LAYOUT = (
    "<root>/wnids.txt, <root>/train/<wnid>/images/*.JPEG, "
    "<root>/val/images/*.JPEG and <root>/val/val_annotations.txt"
)


# ----------------------------------------------------------------------------- shared helpers
def _check_split(split: str, allowed: Sequence[str], where: str) -> None:
    if split not in allowed:
        raise ConfigError(f"split {split!r} is not one of {tuple(allowed)} for {where}")


def _balanced_indices(labels: np.ndarray, limit: int | None) -> np.ndarray:
    """Sorted indices ``[min(limit, N)]`` into labels ``[N]`` of the module docstring's subset."""
    n = len(labels)
    if limit is None or limit >= n:
        return np.arange(n)
    if limit < 1:
        raise ConfigError(f"limit must be a positive int or None, got {limit}")
    order = np.argsort(labels, kind="stable")  # grouped by class, dataset order inside a class
    grouped = labels[order]
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n) - np.searchsorted(grouped, grouped, side="left")
    return np.sort(np.lexsort((labels, rank))[:limit])  # by rank within class, then class


def _subset(images: np.ndarray, labels: np.ndarray, names, limit: int | None) -> Dataset:
    keep = _balanced_indices(labels, limit)
    return Dataset(
        np.ascontiguousarray(images[keep], dtype=np.uint8),
        np.asarray(labels[keep], dtype=np.int32),
        tuple(names),
    )


# What PIL raises for a truncated or corrupt file (UnidentifiedImageError is an OSError).
_IMAGE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    Image.DecompressionBombError,
)
# What a truncated or corrupt .tar.gz / .tar.xz / .gz raises while it is read.
_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile)


@contextlib.contextmanager
def _corrupt_archive_names(path: Path):
    """Turns a decode error raised while reading the archive ``path`` into one naming it."""
    try:
        yield
    except _ARCHIVE_ERRORS as err:
        raise InputError(
            f"cannot read {path} ({type(err).__name__}: {err}); the archive is truncated or "
            "corrupt: download it again (or pass the extracted directory)"
        ) from err


def _decode(path: Path, mode: str | None) -> np.ndarray:
    """Decodes one image file to uint8 ``[H, W, C]``; mode None keeps grey as C=1, else RGB."""
    try:
        with Image.open(path) as im:
            if mode is None:
                mode = "L" if im.mode in ("1", "L", "LA", "I", "I;16") else "RGB"
            arr = np.asarray(im if im.mode == mode else im.convert(mode))
    except _IMAGE_ERRORS as err:
        raise InputError(
            f"cannot decode image {path} ({type(err).__name__}: {err}); the file is truncated "
            "or not a valid image: delete it or re-export it from the original"
        ) from err
    return arr[..., None] if arr.ndim == 2 else arr


def _decode_all(files: Sequence[Path], mode: str | None) -> np.ndarray:
    """Decodes and stacks files to uint8 ``[N, H, W, C]``; grey is promoted to RGB if mixed.

    Serial on purpose: PIL holds the GIL for most of a 32x32 decode (threads measured slower) and
    forking worker processes after JAX has started threads can deadlock. Use ``cache_dir``.
    """
    arrays = [_decode(f, mode) for f in files]
    if any(a.shape[-1] == 3 for a in arrays):
        arrays = [np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a for a in arrays]
    for f, a in zip(files, arrays, strict=True):
        if a.shape != arrays[0].shape:
            raise InputError(
                f"{f} has shape {a.shape} but {files[0]} has {arrays[0].shape}; "
                "all images must have the same size (resize them first)"
            )
    return np.stack(arrays)


def _load_files(files, labels, names, mode, cache_dir: str | None, tag: str) -> Dataset:
    """Decodes ``files`` (or reads the decoded copy in ``cache_dir``) into a Dataset."""
    labels, cache = np.asarray(labels, dtype=np.int32), None
    if cache_dir:  # key: every file's path, size and mtime, so an edited dataset misses
        h = hashlib.sha256(json.dumps([list(names), labels.tolist()]).encode())
        for f in files:
            h.update(f"{f.resolve()}\0{f.stat().st_size}\0{f.stat().st_mtime_ns}\n".encode())
        cache = Path(cache_dir) / f"{tag}-{h.hexdigest()[:20]}.npz"
    if cache is not None and cache.exists():
        try:
            with np.load(cache, allow_pickle=False) as z:
                return Dataset(z["images"], z["labels"], tuple(str(n) for n in z["class_names"]))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            raise InputError(
                f"cannot read the decoded-image cache {cache} ({type(err).__name__}: {err}); "
                "delete it: the next load decodes the images again and rewrites it"
            ) from err
    ds = Dataset(_decode_all(files, mode), labels, tuple(names))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, images=ds.images, labels=ds.labels, class_names=np.array(names, dtype=str))
        os.replace(tmp, cache)  # atomic, so concurrent jobs never read half a file
    return ds


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS  # no stat per file: 50k of them


def _subdirs(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []


# ----------------------------------------------------------------------------- validation part
VAL_SPLIT = "val"  # The split name load_split gives the held-out part of the training split.


def holdout_indices(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted indices ``[per_class * K]`` into labels ``[N]``: ``per_class`` of every class.

    Drawn without replacement by ``seed`` alone (one permutation of the dataset order), so the
    same files and seed give the same part on every machine.
    """
    classes, counts = np.unique(labels, return_counts=True)
    if per_class < 1 or per_class >= counts.min():
        raise ConfigError(
            f"val_per_class must be in [1, {counts.min() - 1}] (the smallest class has "
            f"{counts.min()} training images), got {per_class}"
        )
    perm = np.random.default_rng(seed).permutation(len(labels))
    picks = [perm[labels[perm] == c][:per_class] for c in classes]
    return np.sort(np.concatenate(picks))


def take(ds: Dataset, indices: np.ndarray) -> Dataset:
    """The samples of ``ds`` at ``indices``, in that order."""
    return Dataset(ds.images[indices], ds.labels[indices], ds.class_names)


def balanced_subset(ds: Dataset, limit: int | None) -> Dataset:
    """The class-balanced subset of the module docstring (all of ``ds`` for None or 0)."""
    return take(ds, _balanced_indices(ds.labels, limit or None))


def split_holdout(ds: Dataset, per_class: int, seed: int) -> tuple[Dataset, Dataset, np.ndarray]:
    """``(train minus validation, validation, validation indices into ds)``, disjoint."""
    val_idx = holdout_indices(ds.labels, per_class, seed)
    rest = np.setdiff1d(np.arange(len(ds.labels)), val_idx, assume_unique=True)
    return take(ds, rest), take(ds, val_idx), val_idx


# ----------------------------------------------------------------------------- image folder
def load_image_folder(
    root: str, split: str, limit: int | None = None, cache_dir: str | None = None
) -> Dataset:
    """Loads ``root/<split>/<class name>/*.jpg|*.jpeg|*.png`` (e.g. shared/data/cifar10-jpeg).

    Labels index the sorted class dirs of ``root/train`` (else of ``root/<split>``), so train and
    test labels agree even if a split lacks a class. Images must share one size; grey ones give
    C=1 unless the subset has a colour image. Files are sorted by name inside a class.

    Args:
        root: dataset root; need not be writable.
        split: a subdirectory of ``root``, usually 'train' or 'test'.
        limit: class-balanced subset size (module docstring); only those files are decoded.
        cache_dir: if set, the decoded arrays are stored there as .npz and reused (keyed on the
            file list, sizes and mtimes).

    Returns:
        Dataset with images uint8 ``[N, H, W, C]``, labels int32 ``[N]``.

    Raises:
        InputError: naming the first image that cannot be decoded (truncated, corrupt); the
            load fails rather than skipping it. Delete or re-export that file.
    """
    base, split_dir = Path(root), Path(root) / split
    expected = f"expected {base}/{split}/<class name>/*.jpg|*.jpeg|*.png"
    if not split_dir.is_dir():
        raise MissingInputError(f"no directory {split_dir}; {expected}")
    names = _subdirs(base / "train") or _subdirs(split_dir)
    stray = sorted(set(_subdirs(split_dir)) - set(names))
    if stray:
        raise InputError(f"{split_dir} has classes {stray} that {base}/train lacks; {expected}")
    files, labels = [], []
    for label, name in enumerate(names):
        found = sorted(p for p in (split_dir / name).glob("*") if _is_image(p))
        files += found
        labels += [label] * len(found)
    if not files:
        raise MissingInputError(f"no images found under {split_dir}; {expected}")
    keep = _balanced_indices(np.asarray(labels), limit)
    files, labels = [files[i] for i in keep], np.asarray(labels)[keep]
    return _load_files(files, labels, names, None, cache_dir, f"image_folder-{split}")


# ----------------------------------------------------------------------------- CIFAR (python)
class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays and nothing else.

    A pickle can run arbitrary code when loaded; CIFAR archives come from the internet, and the
    real ones only need numpy's array reconstruction (plus ``_codecs.encode``, which Python 3
    emits for bytes at protocol 2).
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR pickle")
        if module == "numpy.core.multiarray":  # numpy>=2 moved it; avoid the deprecation shim
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def _unpickle(blob: bytes, where: str) -> dict:
    try:
        # encoding='bytes': the real files are Python 2 pickles whose str keys become bytes.
        obj = _ArrayUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as err:  # Truncated or hostile files raise many types; all mean "bad file".
        raise InputError(
            f"cannot unpickle {where}: {err}; the file is truncated or not a CIFAR pickle: "
            f"download the dataset again (expected {_CIFAR_LAYOUT})"
        ) from err
    if not isinstance(obj, dict):
        raise InputError(f"{where} holds a {type(obj).__name__}, expected a dict")
    return obj


def _read_cifar_members(path: Path, wanted: set[str]) -> dict[str, bytes]:
    """Returns {basename: bytes} for the wanted CIFAR files in an archive or directory."""
    if path.is_file():
        out = {}
        # Streaming: one pass, nothing written to disk.
        with _corrupt_archive_names(path), tarfile.open(path, "r|*") as tar:
            for member in tar:
                name = member.name.rsplit("/", 1)[-1]
                if member.isfile() and name in wanted:
                    out[name] = tar.extractfile(member).read()
        return out
    if path.is_dir():
        subs = [path / s for s in ("cifar-10-batches-py", "cifar-100-python")]
        d = next((s for s in subs if s.is_dir()), path)  # accept the parent dir too
        return {n: (d / n).read_bytes() for n in wanted if (d / n).is_file()}
    raise MissingInputError(f"{path} does not exist; expected {_CIFAR_LAYOUT}")


def load_cifar_python(path: str, split: str, limit: int | None = None) -> Dataset:
    """Loads CIFAR-10/100 from the official python-pickle archive or its extracted directory.

    Each pickle holds ``b'data'`` uint8 ``[N, 3072]``: the R, G then B 32x32 planes, row-major.
    CIFAR-100 uses the 100 fine labels.

    Args:
        path: ``cifar-10-python.tar.gz``, ``cifar-100-python.tar.gz`` (read without extracting),
            ``cifar-10-batches-py/``, ``cifar-100-python/`` or a directory holding one of them.
        split: 'train' or 'test'.
        limit: class-balanced subset size (module docstring).

    Returns:
        Dataset with images uint8 ``[N, 32, 32, 3]``, labels int32 ``[N]``.
    """
    _check_split(split, ("train", "test"), path)
    p = Path(path)
    batches10 = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    # One pass for both layouts; only this split's files are read (CIFAR-100 train is 150 MB).
    blobs = _read_cifar_members(p, {*batches10, "batches.meta", split, "meta"})
    if "batches.meta" in blobs:  # CIFAR-10
        files = batches10
        meta, label_key, names_key = "batches.meta", b"labels", b"label_names"
    else:  # CIFAR-100
        files, meta, label_key, names_key = [split], "meta", b"fine_labels", b"fine_label_names"
    missing = [f for f in [*files, meta] if f not in blobs]
    if missing:
        raise MissingInputError(f"{p} lacks {missing}; expected {_CIFAR_LAYOUT}")
    images, labels = [], []
    for f in files:
        d = _unpickle(blobs[f], f"{p}:{f}")
        data = np.asarray(d.get(b"data", ()), dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or label_key not in d:
            raise InputError(f"{p}:{f} needs b'data' [N, 3072] and {label_key!r}")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # CHW planes -> HWC
        labels.append(np.asarray(d[label_key], dtype=np.int32))
    raw_names = _unpickle(blobs[meta], f"{p}:{meta}").get(names_key)
    if raw_names is None:
        raise InputError(f"{p}:{meta} has no {names_key!r}")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in raw_names]
    return _subset(np.concatenate(images), np.concatenate(labels), names, limit)


# ----------------------------------------------------------------------------- IDX (MNIST)

_IDX_MAGIC = {3: 0x00000803, 1: 0x00000801}  # unsigned-byte data with 3 dims / 1 dim


def _read_idx(stem: Path, ndim: int) -> np.ndarray:
    """Reads ``stem`` or ``stem.gz`` and validates the big-endian IDX header."""
    f = next((c for c in (stem, stem.with_name(stem.name + ".gz")) if c.is_file()), None)
    if f is None:
        raise MissingInputError(f"neither {stem} nor {stem}.gz exists; expected {_IDX_LAYOUT}")
    with _corrupt_archive_names(f):
        raw = gzip.decompress(f.read_bytes()) if f.suffix == ".gz" else f.read_bytes()
    header = 4 + 4 * ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != _IDX_MAGIC[ndim]:
        raise InputError(f"{f}: bad IDX magic 0x{raw[:4].hex()}, expected {_IDX_MAGIC[ndim]:#010x}")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if len(raw) - header != int(np.prod(dims)):
        raise InputError(
            f"{f}: header says {dims} = {np.prod(dims)} bytes, found {len(raw) - header}; the "
            "file is truncated: download it again"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def load_idx(path: str, split: str, limit: int | None = None) -> Dataset:
    """Loads MNIST-style IDX files (Fashion-MNIST, MNIST), gzipped or not.

    Class names are Fashion-MNIST's when the directory (or its parent, as in torchvision's
    ``FashionMNIST/raw``) has "fashion" in its name, else the digits '0'..'9'.

    Args:
        path: directory with ``{train,t10k}-images-idx3-ubyte[.gz]`` and
            ``{train,t10k}-labels-idx1-ubyte[.gz]``.
        split: 'train' or 'test' (the t10k files).
        limit: class-balanced subset size (module docstring).

    Returns:
        Dataset with images uint8 ``[N, 28, 28, 1]``, labels int32 ``[N]``.
    """
    _check_split(split, ("train", "test"), path)
    d = Path(path)
    if not d.is_dir():
        raise MissingInputError(f"{d} is not a directory; expected {_IDX_LAYOUT}")
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(d / f"{prefix}-images-idx3-ubyte", 3)
    labels = _read_idx(d / f"{prefix}-labels-idx1-ubyte", 1)
    if len(images) != len(labels):
        raise InputError(f"{d}: {len(images)} {prefix} images but {len(labels)} labels")
    fashion = any("fashion" in n.lower() for n in (d.resolve().name, d.resolve().parent.name))
    names = FASHION_MNIST_CLASSES if fashion else DIGIT_CLASSES
    if labels.size and labels.max() >= len(names):
        raise InputError(f"{d}: label {labels.max()} out of range for {len(names)} classes")
    return _subset(images[..., None], labels, names, limit)


# ----------------------------------------------------------------------------- Tiny-ImageNet
def _read_lines(f: Path) -> list[str]:
    if not f.is_file():
        raise MissingInputError(f"{f} is missing; expected {_TINY_LAYOUT}")
    try:
        text = f.read_text()
    except UnicodeDecodeError as err:
        raise InputError(f"{f} is not UTF-8 text ({err}); download the dataset again") from err
    return [line for line in text.splitlines() if line.strip()]


def load_tiny_imagenet(
    root: str, split: str, limit: int | None = None, cache_dir: str | None = None
) -> Dataset:
    """Loads Tiny-ImageNet-200 (64x64, 200 classes; grey JPEGs in it are converted to RGB).

    The official test split has no labels, so 'test' is an alias for 'val' (10k labelled images).
    Class names are the words.txt entries (e.g. 'goldfish, Carassius auratus'); the wnid when
    words.txt is absent.

    Args:
        root: ``tiny-imagenet-200/`` with wnids.txt, words.txt, train/, val/.
        split: 'train', 'val' or 'test' (= 'val').
        limit: class-balanced subset size (module docstring); only those files are decoded.
        cache_dir: as in ``load_image_folder``.

    Returns:
        Dataset with images uint8 ``[N, 64, 64, 3]``, labels int32 ``[N]`` (wnids.txt order).
    """
    _check_split(split, ("train", "val", "test"), root)
    base = Path(root)
    wnids = [w.strip() for w in _read_lines(base / "wnids.txt")]
    index = {w: i for i, w in enumerate(wnids)}
    words_file = base / "words.txt"
    lines = _read_lines(words_file) if words_file.is_file() else []
    words = dict(ln.split("\t", 1) for ln in lines if "\t" in ln)
    names = [words.get(w, w).strip() for w in wnids]
    if split == "train":
        files = [p for w in wnids for p in sorted((base / "train" / w / "images").glob("*"))]
        files = [p for p in files if _is_image(p)]
        labels = [index[p.parent.parent.name] for p in files]
    else:
        ann = base / "val" / "val_annotations.txt"
        rows = [ln.split("\t") for ln in _read_lines(ann)]
        bad = next((r for r in rows if len(r) < 2 or r[1] not in index), None)
        if bad is not None:
            raise InputError(f"{ann}: bad row {bad}; expected 'file<TAB>wnid<TAB>x0 y0 x1 y1'")
        files = [base / "val" / "images" / r[0] for r in rows]
        labels = [index[r[1]] for r in rows]
        if absent := [f for f in files if not f.is_file()][:3]:
            raise MissingInputError(f"{ann} lists missing files, e.g. {absent}")
    if not files:
        raise MissingInputError(f"no {split} images under {base}; expected {_TINY_LAYOUT}")
    keep = _balanced_indices(np.asarray(labels), limit)
    files, labels = [files[i] for i in keep], np.asarray(labels)[keep]
    tag = f"tiny_imagenet-{'train' if split == 'train' else 'val'}"
    return _load_files(files, labels, names, "RGB", cache_dir, tag)


# ----------------------------------------------------------------------------- TFDS
def load_tfds(
    name: str, split: str, data_dir: str | None = None, limit: int | None = None
) -> Dataset:
    """Loads a prepared (array_record) TFDS dataset via ``tfds.data_source``: no TF graph.

    Examples are read one by one, so this suits small sets or a ``limit``.

    Args:
        name: TFDS name, optionally with config/version ('cifar10', 'cifar10:3.0.2').
        split: TFDS split string ('train', 'test[:10%]').
        data_dir: TFDS data directory; None uses TFDS's default.
        limit: the FIRST ``limit`` examples (not class-balanced: labels are only known by
            reading each example).

    Returns:
        Dataset with images uint8 ``[N, H, W, C]``, labels int32 ``[N]``.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise ImportError(
            "load_tfds needs tensorflow_datasets: `pip install tensorflow-datasets` "
            "(or use another loader: " + ", ".join(k for k in LOADERS if k != "tfds") + ")"
        ) from err
    source = tfds.data_source(name, split=split, data_dir=data_dir)
    n = len(source) if limit is None else min(limit, len(source))
    if n < 1:
        raise InputError(f"tfds {name!r} split {split!r} is empty or limit={limit} < 1")
    examples = [source[i] for i in range(n)]
    if not {"image", "label"} <= set(examples[0]):
        raise InputError(f"tfds {name!r} has keys {sorted(examples[0])}, need image and label")
    images = np.stack([np.asarray(e["image"], dtype=np.uint8) for e in examples])
    labels = np.asarray([int(e["label"]) for e in examples], dtype=np.int32)
    info = getattr(source, "dataset_info", None)
    try:
        names = tuple(info.features["label"].names)
    except (AttributeError, KeyError, TypeError):
        names = tuple(str(i) for i in range(int(labels.max()) + 1))
    return Dataset(images[..., None] if images.ndim == 3 else images, labels, names)


# ----------------------------------------------------------------------------- registry

LOADERS: dict[str, Callable[..., Dataset]] = {
    "image_folder": load_image_folder,
    "cifar_python": load_cifar_python,
    "idx": load_idx,
    "tiny_imagenet": load_tiny_imagenet,
    "tfds": load_tfds,
}

_VERSION = re.compile(r"^[0-9.*]+$")


def load_dataset(kind: str, path: str, split: str, limit: int | None = None, **kwargs) -> Dataset:
    """Loads a dataset with the loader registered under ``kind``.

    Args:
        kind: a key of ``LOADERS`` (see ``detect_kind`` to guess it).
        path: what the loader reads. For 'tfds' it is 'name' or 'name:data_dir', where the name
            may carry a version ('cifar10:3.0.2' or 'cifar10:3.0.2:/data/tfds'): a last part of
            only digits, dots and '*' is a version, anything else a data_dir.
        split: the split name the loader accepts.
        limit: subset size, see the module docstring.
        **kwargs: passed to the loader (e.g. ``cache_dir`` for image_folder, tiny_imagenet).

    Returns:
        Dataset.
    """
    if kind not in LOADERS:
        raise ConfigError(f"unknown dataset kind {kind!r}; valid kinds: {sorted(LOADERS)}")
    if kind == "tfds":
        name, _, data_dir = path.rpartition(":")
        if not name or _VERSION.match(data_dir):
            name, data_dir = path, None
        return load_tfds(name, split, data_dir=data_dir or None, limit=limit, **kwargs)
    return LOADERS[kind](path, split, limit=limit, **kwargs)


def detect_kind(path: str) -> str:
    """Guesses the ``LOADERS`` key for what is at ``path`` ('tfds' is never guessed).

    Raises:
        InputError: naming ``path`` and the layouts expected, when nothing matches.
    """
    p = Path(path)
    if p.is_file() and tarfile.is_tarfile(p):
        with _corrupt_archive_names(p), tarfile.open(p, "r|*") as tar:
            first = next(iter(tar), None)
        if first is not None and first.name.split("/")[0].startswith("cifar-"):
            return "cifar_python"
    if p.is_dir():
        names = {c.name for c in p.iterdir()}
        if "wnids.txt" in names:
            return "tiny_imagenet"
        cifar10 = {"batches.meta", "data_batch_1", "cifar-10-batches-py", "cifar-100-python"}
        cifar100 = {"train", "meta"} <= names and (p / "meta").is_file()
        if names & cifar10 or cifar100:
            return "cifar_python"
        if any(n.startswith("train-images-idx3-ubyte") for n in names):
            return "idx"
        if _subdirs(p / "train") and _subdirs(p / "test"):
            return "image_folder"
    raise InputError(
        f"cannot tell the dataset kind of {path}; expected one of: image_folder "
        f"({_IMAGE_FOLDER_LAYOUT}), cifar_python ({_CIFAR_LAYOUT}), idx ({_IDX_LAYOUT}), "
        f"tiny_imagenet ({_TINY_LAYOUT})"
    )


# Loaders that can keep their decoded arrays in ``config.data.cache_dir``.
_CACHED = ("image_folder", "tiny_imagenet")


def load_split(data_cfg, split: str, limit: int | None = None) -> Dataset:
    """Loads one split of a ``config.data`` section; a missing dataset says what to do.

    With ``data_cfg.val_per_class`` N > 0 the training split is cut in two by
    ``split_holdout`` (seed ``data_cfg.val_seed``): split ``train_split`` is what is left and
    split ``VAL_SPLIT`` ('val') the N held-out images of every class, for choosing settings;
    report the test split only for the settings chosen. ``limit`` then applies to the part.
    """
    per_class = int(data_cfg.get("val_per_class", 0) or 0)
    if split == VAL_SPLIT and per_class < 1:
        raise ConfigError(f"split {VAL_SPLIT!r} needs data.val_per_class > 0 (images a class)")
    if per_class < 1 or split not in (VAL_SPLIT, data_cfg.train_split):
        return _load_raw_split(data_cfg, split, limit)
    rest, val, _ = load_train_val(data_cfg)
    return balanced_subset(val if split == VAL_SPLIT else rest, limit)


def load_train_val(data_cfg) -> tuple[Dataset, Dataset, np.ndarray]:
    """``split_holdout`` of the training split by ``data_cfg.val_per_class`` / ``val_seed``."""
    whole = _load_raw_split(data_cfg, data_cfg.train_split, None)
    per_class, seed = int(data_cfg.get("val_per_class", 0)), int(data_cfg.get("val_seed", 0))
    return split_holdout(whole, per_class, seed)


def _load_raw_split(data_cfg, split: str, limit: int | None) -> Dataset:
    """One split as its loader returns it; a missing dataset says what to do."""
    try:
        if not Path(data_cfg.path).exists() and data_cfg.kind != "tfds":
            raise MissingInputError(f"Dataset path {data_cfg.path} does not exist.")
        kind = detect_kind(data_cfg.path) if data_cfg.kind == "auto" else data_cfg.kind
        cache = data_cfg.get("cache_dir", "")
        kwargs = {"cache_dir": str(Path(cache).expanduser())} if cache and kind in _CACHED else {}
        return load_dataset(kind, data_cfg.path, split, limit=limit, **kwargs)
    except FileNotFoundError as e:
        hint = ""
        if data_cfg.name == "fashion_mnist":
            hint = (
                " Fashion-MNIST: run `apt-get install -y dataset-fashion-mnist` (Debian/Ubuntu), "
                "or put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz in one directory "
                "and pass --config.data.path=DIR."
            )
        raise MissingInputError(f"{e}{hint} (config.data.path={data_cfg.path!r})") from e
