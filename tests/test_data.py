"""Tests for stars_jax.data: fixtures are written in each format's exact real layout."""

import gzip
import pickle
import sys
import tarfile
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stars_jax import data
from stars_jax.apply import NORMALIZATION
from stars_jax.errors import InputError

CIFAR10_NAMES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------- fixture writers


def _tar_dir(src: Path, archive: Path) -> Path:
    """Tars ``src`` (as its top-level folder, like the official archives) into ``archive``."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname=src.name)
    return archive


def _cifar_images(n: int, seed: int) -> np.ndarray:
    """Random uint8 [n, 32, 32, 3]; image 0 encodes position: R = x, G = y, B = 200."""
    images = _rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    y, x = np.mgrid[:32, :32]
    images[0] = np.stack([x, y, np.full_like(x, 200)], axis=-1)
    return images


def _cifar_record(images: np.ndarray, labels, label_key: bytes) -> dict:
    # The real pickles store R, G, B planes, each row-major, flattened to [N, 3072].
    return {
        b"batch_label": b"fixture batch",
        label_key: [int(v) for v in labels],
        b"data": images.transpose(0, 3, 1, 2).reshape(len(images), 3072),
        b"filenames": [f"img_{i}.png".encode() for i in range(len(images))],
    }


def _write_pickle(path: Path, obj) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))  # the real files are protocol-2 pickles


@pytest.fixture
def cifar10(tmp_path):
    """cifar-10-batches-py/ (3 images per train batch, 4 test) and its .tar.gz."""
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    train_x, test_x = _cifar_images(15, 1), _cifar_images(4, 2)
    train_y, test_y = _rng(3).integers(0, 10, 15), _rng(4).integers(0, 10, 4)
    for b in range(5):
        rec = _cifar_record(train_x[3 * b : 3 * b + 3], train_y[3 * b : 3 * b + 3], b"labels")
        _write_pickle(d / f"data_batch_{b + 1}", rec)
    _write_pickle(d / "test_batch", _cifar_record(test_x, test_y, b"labels"))
    meta = {b"num_cases_per_batch": 3, b"label_names": [n.encode() for n in CIFAR10_NAMES]}
    _write_pickle(d / "batches.meta", {**meta, b"num_vis": 3072})
    (d / "readme.html").write_text("<html></html>")
    tar = _tar_dir(d, tmp_path / "cifar-10-python.tar.gz")
    return types.SimpleNamespace(dir=d, tar=tar, train=(train_x, train_y), test=(test_x, test_y))


@pytest.fixture
def cifar100(tmp_path):
    """cifar-100-python/{train,test,meta} with fine and coarse labels, and its .tar.gz."""
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    fine = [f"fine_{i:02d}" for i in range(100)]
    splits = {}
    for i, split in enumerate(("train", "test")):
        x, y = _cifar_images(6, 10 + i), _rng(20 + i).integers(0, 100, 6)
        rec = _cifar_record(x, y, b"fine_labels")
        _write_pickle(d / split, {**rec, b"coarse_labels": [int(v) // 5 for v in y]})
        splits[split] = (x, y)
    coarse = [f"coarse_{i}".encode() for i in range(20)]
    _write_pickle(
        d / "meta", {b"fine_label_names": [n.encode() for n in fine], b"coarse_label_names": coarse}
    )
    tar = _tar_dir(d, tmp_path / "cifar-100-python.tar.gz")
    return types.SimpleNamespace(dir=d, tar=tar, names=fine, **splits)


def _write_idx(path: Path, arr: np.ndarray, magic: int | None = None) -> None:
    header = (magic or 0x0800 + arr.ndim).to_bytes(4, "big")
    header += b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    raw = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def _idx_dir(root: Path, gz: bool = True) -> tuple[Path, dict]:
    root.mkdir(parents=True)
    ext = ".gz" if gz else ""
    arrays = {}
    for i, prefix in enumerate(("train", "t10k")):
        x = _rng(30 + i).integers(0, 256, (7, 28, 28), dtype=np.uint8)
        y = _rng(40 + i).integers(0, 10, 7).astype(np.uint8)
        _write_idx(root / f"{prefix}-images-idx3-ubyte{ext}", x)
        _write_idx(root / f"{prefix}-labels-idx1-ubyte{ext}", y)
        arrays[prefix] = (x, y)
    return root, arrays


def _save(path: Path, pixels: np.ndarray, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.squeeze()).save(path, format=fmt)


@pytest.fixture
def image_folder(tmp_path):
    """PNG image folder: train has ant/cat/dog (2 each), test lacks 'cat'; 8x8 RGB."""
    root, pixels = tmp_path / "folder", {}
    rng = _rng(50)
    for split, classes in (("train", ("dog", "ant", "cat")), ("test", ("dog", "ant"))):
        for c in classes:
            for i in range(2):
                px = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                _save(root / split / c / f"{i:04d}.png", px)
                pixels[(split, c, i)] = px
    return root, pixels


WNIDS = ["n01443537", "n01629819", "n01641577"]
COLOURS = {"n01443537": (200, 30, 30), "n01629819": (30, 200, 30), "n01641577": (30, 30, 200)}


@pytest.fixture
def tiny_imagenet(tmp_path):
    """tiny-imagenet-200 tree: 3 wnids x 2 train JPEGs (one grey), 4 val JPEGs, uniform colours."""
    root = tmp_path / "tiny-imagenet-200"
    root.mkdir()
    (root / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    words = [
        "n00001740\tentity",
        "n01443537\tgoldfish, Carassius auratus",
        "n01629819\tEuropean fire salamander, Salamandra salamandra",
        "n01641577\tbullfrog, Rana catesbeiana",
    ]
    (root / "words.txt").write_text("\n".join(words) + "\n")
    for w in WNIDS:
        for i in range(2):
            px = np.full((64, 64, 3), COLOURS[w], np.uint8)
            _save(root / "train" / w / "images" / f"{w}_{i}.JPEG", px, "JPEG")
        (root / "train" / w / f"{w}_boxes.txt").write_text(f"{w}_0.JPEG\t0\t0\t63\t63\n")
    _save(
        root / "train" / WNIDS[0] / "images" / f"{WNIDS[0]}_1.JPEG",
        np.full((64, 64), 90, np.uint8),
        "JPEG",
    )
    val = [WNIDS[2], WNIDS[0], WNIDS[1], WNIDS[2]]
    for i, w in enumerate(val):
        _save(root / "val" / "images" / f"val_{i}.JPEG", np.full((64, 64, 3), COLOURS[w], np.uint8))
    rows = [f"val_{i}.JPEG\t{w}\t0\t5\t60\t62" for i, w in enumerate(val)]
    (root / "val" / "val_annotations.txt").write_text("\n".join(rows) + "\n")
    _save(root / "test" / "images" / "test_0.JPEG", np.zeros((64, 64, 3), np.uint8), "JPEG")
    return root, val


# ----------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("where", ["tar", "dir"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar10_pixels_and_labels(cifar10, where, split):
    ds = data.load_cifar_python(str(getattr(cifar10, where)), split)
    x, y = getattr(cifar10, split)
    np.testing.assert_array_equal(ds.images, x)
    np.testing.assert_array_equal(ds.labels, y)
    assert ds.images.dtype == np.uint8 and ds.labels.dtype == np.int32
    assert ds.class_names == tuple(CIFAR10_NAMES)


def test_cifar_plane_order_is_rgb_and_rows_are_y(cifar10):
    """Would fail if planes were read as BGR or if H and W were swapped."""
    img = data.load_cifar_python(str(cifar10.tar), "test").images[0]
    np.testing.assert_array_equal(img[5, 7], [7, 5, 200])
    np.testing.assert_array_equal(img[31, 0], [0, 31, 200])


@pytest.mark.parametrize("where", ["tar", "dir"])
def test_cifar100_fine_labels(cifar100, where):
    for split in ("train", "test"):
        ds = data.load_cifar_python(str(getattr(cifar100, where)), split)
        np.testing.assert_array_equal(ds.images, getattr(cifar100, split)[0])
        np.testing.assert_array_equal(ds.labels, getattr(cifar100, split)[1])
        assert ds.class_names == tuple(cifar100.names)


def test_cifar_accepts_parent_dir_and_limit(cifar10):
    ds = data.load_cifar_python(str(cifar10.dir.parent), "train", limit=4)
    assert ds.images.shape == (4, 32, 32, 3)


def test_cifar_errors(cifar10, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.*cifar-10-batches-py"):
        data.load_cifar_python(str(tmp_path / "nope"), "train")
    (cifar10.dir / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks \['test_batch'\]"):
        data.load_cifar_python(str(cifar10.dir), "test")
    with pytest.raises(ValueError, match="split 'val'"):
        data.load_cifar_python(str(cifar10.dir), "val")


def test_cifar_refuses_code_in_pickle(cifar10):
    # A pickle can run code on load; only numpy array reconstruction is allowed.
    (cifar10.dir / "test_batch").write_bytes(pickle.dumps({b"data": print}, protocol=2))
    with pytest.raises(ValueError, match="refusing to load .*print"):
        data.load_cifar_python(str(cifar10.dir), "test")


# ----------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [True, False])
def test_idx_pixels_labels_and_digit_names(tmp_path, gz):
    root, arrays = _idx_dir(tmp_path / "mnist", gz)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        ds = data.load_idx(str(root), split)
        np.testing.assert_array_equal(ds.images, arrays[prefix][0][..., None])
        np.testing.assert_array_equal(ds.labels, arrays[prefix][1])
        assert ds.images.dtype == np.uint8 and ds.labels.dtype == np.int32
    assert ds.class_names == data.DIGIT_CLASSES


def test_idx_fashion_names(tmp_path):
    root, _ = _idx_dir(tmp_path / "fashion-mnist")
    assert data.load_idx(str(root), "test").class_names[0] == "T-shirt/top"


def test_idx_bad_header_or_size(tmp_path):
    root, arrays = _idx_dir(tmp_path / "mnist")
    x, y = arrays["t10k"]
    _write_idx(root / "t10k-labels-idx1-ubyte.gz", y, magic=0x0803)
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz: bad IDX magic"):
        data.load_idx(str(root), "test")
    _write_idx(root / "t10k-labels-idx1-ubyte.gz", y[:3])
    with pytest.raises(ValueError, match="7 t10k images but 3 labels"):
        data.load_idx(str(root), "test")
    raw = gzip.decompress((root / "t10k-images-idx3-ubyte.gz").read_bytes())
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[:-5]))
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz: header says"):
        data.load_idx(str(root), "test")
    (root / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.gz exists"):
        data.load_idx(str(root), "train")


# ----------------------------------------------------------------------------- image folder


def test_image_folder_exact_pixels_and_sorted_classes(image_folder):
    root, pixels = image_folder
    ds = data.load_image_folder(str(root), "train")
    assert ds.class_names == ("ant", "cat", "dog")
    np.testing.assert_array_equal(ds.labels, [0, 0, 1, 1, 2, 2])
    expected = [pixels[("train", c, i)] for c in ("ant", "cat", "dog") for i in range(2)]
    np.testing.assert_array_equal(ds.images, np.stack(expected))


def test_image_folder_test_labels_follow_train_classes(image_folder):
    root, pixels = image_folder
    ds = data.load_image_folder(str(root), "test")  # test has no 'cat': dog must still be 2
    assert ds.class_names == ("ant", "cat", "dog")
    np.testing.assert_array_equal(ds.labels, [0, 0, 2, 2])
    np.testing.assert_array_equal(ds.images[2], pixels[("test", "dog", 0)])


def test_image_folder_limit_is_class_balanced(image_folder):
    ds = data.load_image_folder(str(image_folder[0]), "train", limit=4)
    np.testing.assert_array_equal(ds.labels, [0, 0, 1, 2])  # one per class, then ant again


def test_balanced_indices_order():
    labels = np.array([2, 0, 0, 1, 0, 2, 1])
    # First of each class (1, 3, 0), then second of each class by class order (2, 6, 5): keep 5.
    np.testing.assert_array_equal(data._balanced_indices(labels, 5), [0, 1, 2, 3, 6])
    with pytest.raises(ValueError, match="limit"):
        data._balanced_indices(labels, 0)


def test_image_folder_grey_jpeg_and_mixed(tmp_path):
    root = tmp_path / "grey"
    _save(root / "train" / "a" / "0.png", np.full((5, 6), 7, np.uint8))
    _save(root / "train" / "b" / "0.JPG", np.full((5, 6), 160, np.uint8), "JPEG")
    ds = data.load_image_folder(str(root), "train")
    assert ds.images.shape == (2, 5, 6, 1)
    assert ds.images[0].max() == 7 and abs(int(ds.images[1].mean()) - 160) <= 2
    _save(root / "train" / "b" / "1.png", np.full((5, 6, 3), 9, np.uint8))
    assert data.load_image_folder(str(root), "train").images.shape == (3, 5, 6, 3)
    _save(root / "train" / "b" / "2.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="2.png has shape .* same size"):
        data.load_image_folder(str(root), "train")


def test_image_folder_errors(image_folder, tmp_path):
    root, _ = image_folder
    with pytest.raises(FileNotFoundError, match=r"expected .*nope/train/<class name>/\*\.jpg"):
        data.load_image_folder(str(tmp_path / "nope"), "train")
    with pytest.raises(FileNotFoundError, match=r"expected .*folder/val/<class name>/"):
        data.load_image_folder(str(root), "val")
    (root / "test" / "zebra").mkdir()
    with pytest.raises(ValueError, match=r"classes \['zebra'\] that .*train lacks"):
        data.load_image_folder(str(root), "test")
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no images found under .*empty/train"):
        data.load_image_folder(str(tmp_path / "empty"), "train")


def test_image_folder_cache_is_reused(image_folder, tmp_path, monkeypatch):
    root, _ = image_folder
    first = data.load_image_folder(str(root), "train", cache_dir=str(tmp_path / "cache"))
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1

    def fail(*args):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(data, "_decode_all", fail)
    second = data.load_image_folder(str(root), "train", cache_dir=str(tmp_path / "cache"))
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name,fmt", [("1.jpg", "JPEG"), ("1.png", "PNG")])
def test_image_folder_truncated_image_names_the_file(image_folder, name, fmt):
    root, _ = image_folder
    bad = root / "train" / "cat" / name
    _save(bad, _rng(60).integers(0, 256, (8, 8, 3), dtype=np.uint8), fmt)
    bad.write_bytes(bad.read_bytes()[:-40])  # A partial copy or interrupted download.
    with pytest.raises(InputError, match=rf"cannot decode image .*cat/{name}.*re-export"):
        data.load_image_folder(str(root), "train")


def test_corrupt_archives_and_cache_name_the_file(cifar10, image_folder, tmp_path):
    blob = cifar10.tar.read_bytes()
    cifar10.tar.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(InputError, match=r"cannot read .*cifar-10-python.tar.gz .*download"):
        data.load_cifar_python(str(cifar10.tar), "train")
    root, _ = _idx_dir(tmp_path / "mnist")
    labels = root / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:-6])
    with pytest.raises(InputError, match=r"cannot read .*t10k-labels-idx1-ubyte.gz"):
        data.load_idx(str(root), "test")
    cache = tmp_path / "cache"
    data.load_image_folder(str(image_folder[0]), "train", cache_dir=str(cache))
    (npz,) = cache.glob("*.npz")
    npz.write_bytes(npz.read_bytes()[:100])
    with pytest.raises(InputError, match=rf"cache {npz}.*delete it"):
        data.load_image_folder(str(image_folder[0]), "train", cache_dir=str(cache))


# ----------------------------------------------------------------------------- Tiny-ImageNet


def test_tiny_imagenet_train_and_val(tiny_imagenet):
    root, val = tiny_imagenet
    train = data.load_tiny_imagenet(str(root), "train")
    assert train.images.shape == (6, 64, 64, 3) and train.images.dtype == np.uint8
    np.testing.assert_array_equal(train.labels, [0, 0, 1, 1, 2, 2])
    assert train.class_names[0] == "goldfish, Carassius auratus" and len(train.class_names) == 3
    assert np.abs(train.images[1].astype(int) - 90).max() <= 2  # grey JPEG -> RGB
    for i in (0, 2, 4):
        colour = COLOURS[WNIDS[i // 2]]
        assert np.abs(train.images[i].astype(int) - colour).max() <= 3
    for split in ("val", "test"):  # 'test' is an alias: the real test split has no labels
        ds = data.load_tiny_imagenet(str(root), split)
        np.testing.assert_array_equal(ds.labels, [WNIDS.index(w) for w in val])
        for img, w in zip(ds.images, val, strict=True):
            assert np.abs(img.astype(int) - COLOURS[w]).max() <= 3


def test_tiny_imagenet_limit_and_errors(tiny_imagenet, tmp_path):
    root, _ = tiny_imagenet
    np.testing.assert_array_equal(
        data.load_tiny_imagenet(str(root), "val", limit=3).labels, [2, 0, 1]
    )
    with pytest.raises(FileNotFoundError, match="nope/wnids.txt is missing"):
        data.load_tiny_imagenet(str(tmp_path / "nope"), "train")
    with (root / "val" / "val_annotations.txt").open("a") as f:
        f.write("val_9.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match="val_annotations.txt: bad row"):
        data.load_tiny_imagenet(str(root), "val")


# ----------------------------------------------------------------------------- TFDS


def test_tfds_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(ImportError, match="pip install tensorflow-datasets"):
        data.load_tfds("mnist", "train")


def _fake_tfds(calls: list) -> types.ModuleType:
    """A module whose data_source returns 5 grey 4x4 examples (label = index % 3)."""

    class Source(list):
        dataset_info = types.SimpleNamespace(
            features={"label": types.SimpleNamespace(names=["a", "b", "c"])}
        )

    def data_source(name, split, data_dir=None):
        calls.append((name, split, data_dir))
        ex = [{"image": np.full((4, 4, 1), i, np.uint8), "label": i % 3} for i in range(5)]
        return Source(ex)

    module = types.ModuleType("tensorflow_datasets")
    module.data_source = data_source
    return module


def test_tfds_with_fake_module_and_path_parsing(monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", _fake_tfds(calls))
    ds = data.load_dataset("tfds", "mnist:/data/tfds", "train", limit=4)
    assert calls[-1] == ("mnist", "train", "/data/tfds")
    assert ds.images.shape == (4, 4, 4, 1) and ds.class_names == ("a", "b", "c")
    np.testing.assert_array_equal(ds.labels, [0, 1, 2, 0])
    data.load_dataset("tfds", "cifar10:3.0.2", "test")
    assert calls[-1] == ("cifar10:3.0.2", "test", None)
    data.load_dataset("tfds", "cifar10:3.0.2:rel/dir", "test")
    assert calls[-1] == ("cifar10:3.0.2", "test", "rel/dir")


# ----------------------------------------------------------------------------- registry


def test_load_dataset_and_detect_kind(cifar10, cifar100, image_folder, tiny_imagenet, tmp_path):
    idx_root, _ = _idx_dir(tmp_path / "mnist")
    cases = {
        cifar10.tar: "cifar_python",
        cifar10.dir: "cifar_python",
        cifar100.tar: "cifar_python",
        cifar100.dir: "cifar_python",
        idx_root: "idx",
        image_folder[0]: "image_folder",
        tiny_imagenet[0]: "tiny_imagenet",
    }
    for path, kind in cases.items():
        assert data.detect_kind(str(path)) == kind, path
        split = "val" if kind == "tiny_imagenet" else "test"
        assert isinstance(data.load_dataset(kind, str(path), split, limit=2), data.Dataset)
    with pytest.raises(ValueError, match="valid kinds: .*cifar_python"):
        data.load_dataset("imagenet", str(tmp_path), "train")
    (tmp_path / "blank").mkdir()
    with pytest.raises(ValueError, match=r"kind of .*blank; expected .*image_folder \(<root>"):
        data.detect_kind(str(tmp_path / "blank"))
    (tmp_path / "not.tar.gz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not.tar.gz"):
        data.detect_kind(str(tmp_path / "not.tar.gz"))


# ----------------------------------------------------------------------------- real data


def test_real_cifar10_jpeg_subset(shared_dir):
    root = shared_dir / "data" / "cifar10-jpeg"
    if not root.is_dir():
        pytest.skip(f"no CIFAR-10 JPEG copy at {root}")
    ds = data.load_image_folder(str(root), "test", limit=20)
    assert ds.class_names == tuple(CIFAR10_NAMES)
    assert ds.images.shape == (20, 32, 32, 3) and ds.images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(ds.labels), [2] * 10)
    assert ds.images.std() > 20  # real photos, not blank decodes
    assert data.detect_kind(str(root)) == "image_folder"


def test_real_cifar10_jpeg_full_test_split(shared_dir):
    root = shared_dir / "data" / "cifar10-jpeg"
    if not root.is_dir():
        pytest.skip(f"no CIFAR-10 JPEG copy at {root}")
    ds = data.load_image_folder(str(root), "test")  # ~2 s: 10k JPEG decodes
    assert ds.images.shape == (10000, 32, 32, 3)
    np.testing.assert_array_equal(np.bincount(ds.labels), [1000] * 10)


@pytest.mark.skipif(
    not FASHION_DIR.is_dir(),
    reason=f"Fashion-MNIST not installed at {FASHION_DIR} (apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist():
    ds = data.load_idx(str(FASHION_DIR), "test")
    assert ds.images.shape == (10000, 28, 28, 1) and ds.class_names[9] == "Ankle boot"
    np.testing.assert_array_equal(np.bincount(ds.labels), [1000] * 10)
    assert ds.labels[0] == 9  # the first test image is the well-known ankle boot
    mean = ds.images.mean() / 255
    assert abs(mean - NORMALIZATION["fashion_mnist"][0][0]) < 0.01


# ----------------------------------------------------------------------------- validation part


def test_holdout_is_class_balanced_disjoint_and_fixed_by_seed():
    labels = np.repeat(np.arange(4), [5, 7, 6, 9])[_rng(3).permutation(27)]
    val = data.holdout_indices(labels, 3, seed=0)
    np.testing.assert_array_equal(np.bincount(labels[val]), [3, 3, 3, 3])
    assert len(set(val.tolist())) == 12 and np.all(np.diff(val) > 0)
    np.testing.assert_array_equal(val, data.holdout_indices(labels, 3, seed=0))
    assert not np.array_equal(val, data.holdout_indices(labels, 3, seed=1))
    ds = data.Dataset(np.arange(27, dtype=np.uint8)[:, None, None, None], labels, ("a",) * 4)
    rest, part, idx = data.split_holdout(ds, 3, seed=0)
    np.testing.assert_array_equal(idx, val)
    assert set(rest.images.ravel()) | set(part.images.ravel()) == set(range(27))
    assert not set(rest.images.ravel()) & set(part.images.ravel())
    with pytest.raises(ValueError, match="val_per_class"):
        data.holdout_indices(labels, 5, seed=0)  # the smallest class has 5: none left to train


def _folder_cfg(root, **extra):
    import ml_collections

    keys = dict(name="folder", kind="image_folder", path=str(root), cache_dir="")
    return ml_collections.ConfigDict({**keys, "train_split": "train", **extra})


def test_load_split_val_is_held_out_of_train(image_folder):
    root, _ = image_folder
    whole = data.load_split(_folder_cfg(root), "train")  # no val_per_class key: whole split
    cfg = _folder_cfg(root, val_per_class=1, val_seed=0)
    train, val = data.load_split(cfg, "train"), data.load_split(cfg, "val")
    np.testing.assert_array_equal(np.bincount(val.labels), [1, 1, 1])
    np.testing.assert_array_equal(np.bincount(train.labels), [1, 1, 1])
    seen = {im.tobytes() for im in train.images}
    assert not seen & {im.tobytes() for im in val.images}
    assert seen | {im.tobytes() for im in val.images} == {im.tobytes() for im in whole.images}
    np.testing.assert_array_equal(data.load_split(cfg, "val").images, val.images)
    assert len(data.load_split(cfg, "test").labels) == 4  # other splits are untouched
    with pytest.raises(ValueError, match="val_per_class"):
        data.load_split(_folder_cfg(root), "val")
