"""PyTorch -> Flax teacher conversion, checked against independent PyTorch definitions."""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from flax import serialization

from stars_jax import convert
from stars_jax.errors import InputError
from stars_jax.model_dir import load_model_dir
from stars_jax.models.teachers import make_teacher
from tests.torch_reference import make_torch_teacher, randomize_

BATCH = 2


def _numpy_state_dict(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def _torch_logits(model: torch.nn.Module, x_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2).copy())).numpy()


@functools.cache
def _jitted_apply(arch: str, num_classes: int):
    model = make_teacher(arch, num_classes)
    return jax.jit(functools.partial(model.apply, train=False))


def _cli_args(arch, num_classes, checkpoint, out) -> list[str]:
    return [
        *("--arch", arch, "--num_classes", str(num_classes)),
        *("--checkpoint", str(checkpoint), "--out", str(out)),
    ]


def _assert_logits_close(flax_logits, torch_logits):
    flax_logits, torch_logits = np.asarray(flax_logits), np.asarray(torch_logits)
    scale = float(np.abs(torch_logits).max())
    assert scale > 1e-2, "degenerate reference logits would make the comparison vacuous"
    np.testing.assert_allclose(flax_logits, torch_logits, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize(
    "arch,size",
    [
        ("resnet18", 32),
        ("resnet34", 32),
        ("wrn16_2", 32),
        ("wrn40_2", 32),
        ("vgg11", 32),
        ("vgg11", 64),  # The extra max-pool before block4 exists only for 64x64 inputs.
    ],
)
def test_converted_teacher_matches_pytorch(arch, size):
    num_classes = 10
    torch_model = randomize_(make_torch_teacher(arch, num_classes), seed=size, image_size=size)
    variables = convert.convert_state_dict(
        _numpy_state_dict(torch_model), arch, num_classes, input_shape=(size, size, 3)
    )
    x = np.random.default_rng(0).normal(size=(BATCH, size, size, 3)).astype(np.float32)
    logits, feats = _jitted_apply(arch, num_classes)(variables, x)
    assert logits.shape == (BATCH, num_classes) and feats.shape[0] == BATCH
    _assert_logits_close(logits, _torch_logits(torch_model, x))


@pytest.mark.parametrize(
    "key,shape,want_key,want_shape",
    [
        ("layer1.0.shortcut.1.running_mean", (8,), "batch_stats/layer1_0/shortcut_1/mean", (8,)),
        ("block1.layer.0.bn1.weight", (8,), "params/block1/layer_0/bn1/scale", (8,)),
        ("block2.3.weight", (6, 4, 3, 3), "params/block2_3/kernel", (3, 3, 4, 6)),
        ("fc.weight", (10, 128), "params/fc/kernel", (128, 10)),
        ("classifier.bias", (10,), "params/classifier/bias", (10,)),
        ("bn1.running_var", (8,), "batch_stats/bn1/var", (8,)),
    ],
)
def test_torch_key_to_flax(key, shape, want_key, want_shape):
    value = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    got_key, got = convert.torch_key_to_flax(key, value)
    assert got_key == tuple(want_key.split("/")) and got.shape == want_shape
    if len(shape) == 4:  # Element [o, i, h, w] must land at [h, w, i, o].
        assert got[2, 1, 3, 5] == value[5, 3, 2, 1]


def test_num_batches_tracked_is_ignored():
    assert convert.torch_key_to_flax("bn1.num_batches_tracked", np.array(3)) is None


def test_fp16_dataparallel_bare_state_dict_round_trip(tmp_path, capsys):
    """A bare, half-precision, DataParallel-prefixed state dict -> model dir -> predict."""
    arch = "wrn16_2"
    torch_model = randomize_(make_torch_teacher(arch), seed=1)
    torch_model.half().float()  # The fp32 model now holds exactly the fp16-rounded values.
    half = {f"module.{k}": v.half() for k, v in torch_model.state_dict().items()}
    half = {k: (v.long() if "num_batches" in k else v) for k, v in half.items()}
    path = tmp_path / "bare_fp16.pth"
    torch.save(half, path)

    state_dict = convert.load_torch_checkpoint(path)
    assert not any(k.startswith("module.") for k in state_dict)
    assert state_dict["conv1.weight"].dtype == np.float32

    out = convert.main(_cli_args(arch, 10, path, tmp_path / "m"))
    captured = capsys.readouterr()
    assert "no 'normalize' entry" in captured.err  # Bare state dict: CIFAR-10 default, noticed.
    assert arch in captured.out and "params" in captured.out

    loaded = load_model_dir(out, arch=arch, num_classes=10)
    assert loaded.meta["normalization"]["mean"] == list(convert.CIFAR10_MEAN)
    images = np.random.default_rng(1).integers(0, 256, (BATCH, 32, 32, 3), dtype=np.uint8)
    x = (images / 255.0 - np.array(convert.CIFAR10_MEAN)) / np.array(convert.CIFAR10_STD)
    _assert_logits_close(loaded.predict(images), _torch_logits(torch_model, x.astype(np.float32)))
    # float in [0, 1] is accepted too and means the same images.
    _assert_logits_close(
        loaded.predict((images / 255.0).astype(np.float32)), loaded.predict(images)
    )


def test_wrapped_checkpoint_uses_its_normalize_entry(tmp_path):
    arch = "wrn16_2"
    torch_model = randomize_(make_torch_teacher(arch, 3), seed=2)
    norm = {"mean": (0.5, 0.4, 0.3), "std": (0.25, 0.2, 0.1)}
    ckpt = {"state_dict": torch_model.state_dict(), "epoch": 7, "arch": arch, "normalize": norm}
    torch.save(ckpt, tmp_path / "c.pth")
    out = convert.main(_cli_args(arch, 3, tmp_path / "c.pth", tmp_path / "m"))
    meta = json.loads((out / "model.json").read_text())
    assert meta["normalization"] == {"mean": list(norm["mean"]), "std": list(norm["std"])}
    assert meta["kind"] == "teacher" and meta["input_shape"] == [32, 32, 3]
    assert meta["source_info"] == {"epoch": 7, "arch": arch}
    stored = serialization.msgpack_restore((out / "variables.msgpack").read_bytes())
    assert set(stored) == {"params", "batch_stats"}
    assert all(v.dtype == np.float32 for v in jax.tree_util.tree_leaves(stored))
    assert not list(out.glob("*.tmp")), "atomic writes must not leave temp files behind"


@pytest.mark.parametrize(
    "spec,want",
    [
        ("cifar10", (convert.CIFAR10_MEAN, convert.CIFAR10_STD)),
        ("none", ((0.0,) * 3, (1.0,) * 3)),
        ("0.1,0.2,0.3,1,2,3", ((0.1, 0.2, 0.3), (1.0, 2.0, 3.0))),
    ],
)
def test_parse_normalization(spec, want):
    assert convert.parse_normalization(spec, {})[:2] == want


def test_parse_normalization_rejects_bad_spec():
    with pytest.raises(ValueError, match=r"'0.5,0.5'.*6 comma-separated"):
        convert.parse_normalization("0.5,0.5", {})


@pytest.fixture(scope="module")
def resnet18_state_dict():
    return _numpy_state_dict(randomize_(make_torch_teacher("resnet18"), seed=3))


def test_mismatch_lists_missing_unexpected_and_wrong_shape_keys(resnet18_state_dict):
    sd = dict(resnet18_state_dict)
    del sd["layer2.0.shortcut.1.running_var"]
    sd["layer9.0.conv1.weight"] = np.zeros((4, 4, 3, 3), np.float32)
    sd["linear.weight"] = np.zeros((7, 512), np.float32)
    sd["linear.bias"] = np.zeros((7,), np.float32)
    with pytest.raises(ValueError) as err:
        convert.convert_state_dict(sd, "resnet18", 10, source_arch="resnet18")
    msg = str(err.value)
    assert "missing (1): batch_stats/layer2_0/shortcut_1/var" in msg
    assert "unexpected (1): layer9.0.conv1.weight" in msg
    assert "wrong shape (2)" in msg and "checkpoint (512, 7) vs model (512, 10)" in msg
    assert "pass --num_classes 7" in msg


def test_wrong_arch_hint_names_checkpoint_arch(resnet18_state_dict):
    with pytest.raises(ValueError, match=r"(?s)missing \(\d+\): .*layer1_2.*checkpoint's arch "):
        convert.convert_state_dict(resnet18_state_dict, "resnet34", 10, source_arch="resnet18")
    with pytest.raises(ValueError, match=r"(?s)unexpected \(\d+\): .*is --arch right\?"):
        convert.convert_state_dict(resnet18_state_dict, "wrn16_2", 10)


def test_not_a_torch_checkpoint(tmp_path):
    bad = tmp_path / "notes.pth"
    bad.write_text("definitely not a pickle")
    with pytest.raises(ValueError, match="is not a PyTorch checkpoint"):
        convert.load_torch_checkpoint(bad)
    torch.save({"weights": [1, 2, 3]}, tmp_path / "list.pth")
    with pytest.raises(ValueError, match="not a state dict"):
        convert.load_torch_checkpoint(tmp_path / "list.pth")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        convert.load_torch_checkpoint(tmp_path / "missing.pth")


@pytest.fixture(scope="module")
def wrn_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "wrn16_2.pth"
    torch.save(randomize_(make_torch_teacher("wrn16_2"), seed=4).state_dict(), path)
    return path


def test_unreadable_files_are_not_sent_to_unsafe_pickle(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"PK" + np.random.default_rng(0).bytes(300))  # Not even a zip.
    with pytest.raises(InputError, match="is not a PyTorch checkpoint") as err:
        convert.load_torch_checkpoint(junk)
    assert "unsafe_pickle" not in str(err.value)
    with zipfile.ZipFile(tmp_path / "corrupt.pth", "w") as z:  # torch.save's layout, bad pickle.
        z.writestr("archive/data.pkl", b"\x80\x02garbage")
    with pytest.raises(InputError, match="truncated or corrupt") as err:
        convert.load_torch_checkpoint(tmp_path / "corrupt.pth")
    assert "unsafe_pickle" not in str(err.value)


def test_pickled_objects_suggest_unsafe_pickle_and_its_risk(tmp_path):
    sd = {"w": torch.zeros(2)}
    torch.save({"state_dict": sd, "args": argparse.Namespace(lr=0.1)}, tmp_path / "args.pth")
    with pytest.raises(InputError, match=r"(?s)Namespace.*--unsafe_pickle.*arbitrary code"):
        convert.load_torch_checkpoint(tmp_path / "args.pth")
    got = convert.load_torch_checkpoint(tmp_path / "args.pth", weights_only=False)
    assert set(got) == {"w"}


def test_non_empty_out_needs_overwrite(tmp_path, wrn_checkpoint):
    out = tmp_path / "m"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = _cli_args("wrn16_2", 10, wrn_checkpoint, out)
    with pytest.raises(InputError, match=r"not empty; pass --overwrite") as err:
        convert.main(args)
    assert "\n" not in str(err.value) and not (out / "model.json").exists()
    assert convert.main([*args, "--overwrite"]) == out
    assert load_model_dir(out, arch="wrn16_2").meta["kind"] == "teacher"


def test_out_that_is_a_file_is_a_one_line_error(tmp_path, wrn_checkpoint):
    (tmp_path / "file").write_text("x")
    for out, match in [("file", "is a file"), ("file/sub", "file is a file")]:
        with pytest.raises(InputError, match=match) as err:
            convert.main(_cli_args("wrn16_2", 10, wrn_checkpoint, tmp_path / out))
        assert "\n" not in str(err.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only directory")
def test_unwritable_out_is_refused_before_converting(tmp_path, wrn_checkpoint):
    (tmp_path / "ro").mkdir(mode=0o500)
    with pytest.raises(InputError, match="ro is not writable"):
        convert.main(_cli_args("wrn16_2", 10, wrn_checkpoint, tmp_path / "ro" / "m"))


def test_failed_write_is_a_one_line_error(tmp_path, wrn_checkpoint, monkeypatch):
    def refuse(path, **kwargs):  # What a read-only file system says on the first write.
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(convert, "save_model_dir", refuse)
    with pytest.raises(InputError, match=r"cannot write to --out .*m \(Permission denied\)\.$"):
        convert.main(_cli_args("wrn16_2", 10, wrn_checkpoint, tmp_path / "m"))


def test_cli_user_error_exits_2_without_traceback(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"PK\x03\x04junk")
    out = subprocess.run(
        [sys.executable, "-m", "stars_jax.convert"]
        + _cli_args("wrn16_2", 10, tmp_path / "junk.pth", tmp_path / "m"),
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "error: " in out.stderr and "is not a PyTorch checkpoint" in out.stderr
