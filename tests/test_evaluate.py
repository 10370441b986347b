"""Evaluation loop, model directories and the evaluate CLI; real-teacher acceptance checks."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from stars_jax import accuracy, convert, evaluate
from stars_jax.errors import InputError
from stars_jax.model_dir import check_model_dir, load_model_dir, save_model_dir
from stars_jax.models.teachers import make_teacher

NORM = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def variable_shapes(model, size: int):
    """The tree of ``model.init``'s variables as shapes, without compiling it (~8 s on CPU)."""
    return jax.eval_shape(
        functools.partial(model.init, train=False),
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32),
    )


def _random_variables(model, size: int, seed: int) -> dict:
    """Random numpy variables of the right tree."""
    shapes = variable_shapes(model, size)
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "var":
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        fan_in = int(np.prod(leaf.shape[:-1])) if name == "kernel" else 1
        scale = (2.0 / fan_in) ** 0.5 if name == "kernel" else 0.1
        return (scale * rng.normal(size=leaf.shape) + (name == "scale")).astype(np.float32)

    return jax.tree_util.tree_map_with_path(
        fill, {k: v for k, v in shapes.items() if k in ("params", "batch_stats")}
    )


def _tiny_teacher_dir(path, num_classes=3, size=32, arch="resnet_tiny", seed=0):
    return save_model_dir(
        path,
        kind="teacher",
        arch=arch,
        num_classes=num_classes,
        variables=_random_variables(make_teacher(arch, num_classes), size, seed),
        normalization=NORM,
        input_shape=(size, size, 3),
        extra={"note": "random init"},
    )


def test_evaluate_pads_last_batch_and_traces_once():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 4, 4, 1), dtype=np.uint8)
    labels = rng.integers(0, 6, 7).astype(np.int32)
    traces = []

    def predict(x):  # Class = first pixel mod 6, as a one-hot logit row.
        traces.append(x.shape)
        return jax.nn.one_hot(x[:, 0, 0, 0].astype(jnp.int32) % 6, 6)

    result = accuracy.evaluate(lambda _, x: predict(x), None, images, labels, batch_size=3)
    want = (images[:, 0, 0, 0] % 6 == labels).sum()
    assert traces == [(3, 4, 4, 1)], "one compiled shape; the padded last batch reuses it"
    assert result["n"] == 7 and result["correct"] == want
    assert result["top1"] == pytest.approx(100.0 * want / 7)
    assert result["top5"] >= result["top1"]


def test_evaluate_with_loaded_model_matches_direct_predictions(tmp_path):
    loaded = load_model_dir(_tiny_teacher_dir(tmp_path / "m"))
    assert isinstance(loaded.predict, jax.tree_util.Partial)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, 10).astype(np.int32)
    direct = np.asarray(loaded.predict(images)).argmax(-1)
    result = accuracy.evaluate(loaded.logits, loaded.variables, images, labels, batch_size=4)
    assert result["correct"] == (direct == labels).sum() and "top5" not in result  # K = 3.


def test_compiled_step_takes_weights_as_arguments(tmp_path):
    loaded = load_model_dir(_tiny_teacher_dir(tmp_path / "m"))
    batch = (np.zeros((2, 32, 32, 3), np.uint8), np.zeros(2, np.int32), np.ones(2, bool))
    step = jax.jit(functools.partial(accuracy._batch_hits, loaded.logits))
    hlo = step.lower(loaded.variables, *batch).as_text()
    signature = next(line for line in hlo.splitlines() if "func.func public @main" in line)
    n_weights = len(jax.tree_util.tree_leaves(loaded.variables))
    assert signature.count("%arg") == n_weights + 3  # Weights + the batch, not constants.


def test_model_dir_round_trip_and_meta(tmp_path):
    path = _tiny_teacher_dir(tmp_path / "a" / "b", num_classes=4)  # Parents are created.
    loaded = load_model_dir(path, arch="resnet_tiny", num_classes=4)
    assert loaded.meta["normalization"] == {"mean": list(NORM[0]), "std": list(NORM[1])}
    assert loaded.meta["note"] == "random init" and "stars_jax_version" in loaded.meta
    assert set(loaded.variables) == {"params", "batch_stats"}
    assert loaded.predict(np.zeros((2, 32, 32, 3), np.uint8)).shape == (2, 4)


def test_model_dir_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*python -m stars_jax\.convert"):
        load_model_dir(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"model\.json"):
        load_model_dir(tmp_path / "empty")
    path = _tiny_teacher_dir(tmp_path / "m")
    with pytest.raises(ValueError, match=r"'resnet_tiny'.*'resnet18'"):
        load_model_dir(path, arch="resnet18")
    with pytest.raises(ValueError, match=r"num_classes=3 but 10"):
        check_model_dir(load_model_dir(path).meta, num_classes=10)
    meta = json.loads((path / "model.json").read_text())
    (path / "model.json").write_text(json.dumps({**meta, "num_classes": 5}))
    with pytest.raises(ValueError, match=r"does not match teacher arch 'resnet_tiny'"):
        load_model_dir(path)
    (path / "variables.msgpack").unlink()
    with pytest.raises(FileNotFoundError, match=r"variables\.msgpack"):
        load_model_dir(path)


def test_model_dir_unreadable_files_name_themselves(tmp_path):
    path = _tiny_teacher_dir(tmp_path / "m")
    meta_file, variables_file = path / "model.json", path / "variables.msgpack"
    meta = json.loads(meta_file.read_text())
    blob = variables_file.read_bytes()
    variables_file.write_bytes(blob[: len(blob) // 2])  # An interrupted copy.
    with pytest.raises(InputError, match=rf"{variables_file} cannot be read .*convert"):
        load_model_dir(path)
    meta_file.write_text(json.dumps(meta)[:-10])
    with pytest.raises(InputError, match=rf"{meta_file} is not valid JSON"):
        load_model_dir(path)
    student = {**meta, "kind": "student", "time_steps": 2}  # No 'lif'.
    meta_file.write_text(json.dumps(student))
    with pytest.raises(InputError, match=rf"{meta_file} lacks \['lif'\].*write the directory"):
        load_model_dir(path)


@pytest.mark.parametrize("debug", [False, True])
def test_cli_user_error_is_one_paragraph(tmp_path, debug):
    args = ["--model", str(tmp_path / "nowhere"), "--data_dir", str(tmp_path)]
    out = subprocess.run(
        [sys.executable, "-m", "stars_jax.evaluate", *args, *(["--debug"] if debug else [])],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if debug:  # --debug shows where it came from.
        assert out.returncode == 1 and "Traceback" in out.stderr
    else:
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "error: Model directory not found" in out.stderr or debug
    assert "Model directory not found" in out.stderr


def test_save_model_dir_rejects_bad_normalization(tmp_path):
    with pytest.raises(ValueError, match=r"one value per input channel \(C = 3\)"):
        save_model_dir(
            tmp_path,
            kind="teacher",
            arch="resnet_tiny",
            num_classes=3,
            variables={"params": {}},
            normalization=((0.5,), (0.2,)),
            input_shape=(32, 32, 3),
        )


def _write_image_folder(root, split, size, per_class, classes=("cat", "dog", "emu")):
    rng = np.random.default_rng(2)
    for name in classes:
        (root / split / name).mkdir(parents=True)
        (root / "train" / name).mkdir(parents=True, exist_ok=True)  # For label order.
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / split / name / f"{i:04d}.png")  # Lossless.


def test_cli_prints_json_last_line(tmp_path, capsys):
    model = _tiny_teacher_dir(tmp_path / "m")
    _write_image_folder(tmp_path / "data", "test", 32, per_class=4)
    args = ["--model", str(model), "--data_dir", str(tmp_path / "data"), "--batch_size", "5"]
    record = evaluate.main(args)
    out = capsys.readouterr()
    last = json.loads(out.out.strip().splitlines()[-1])
    assert last == record and "eval 12/12" in out.err
    assert {"top1", "n", "arch", "kind", "split", "seconds"} <= set(last)
    assert last["n"] == 12 and last["arch"] == "resnet_tiny" and last["kind"] == "teacher"
    assert last["data_kind"] == "image_folder" and last["split"] == "test"

    evaluate.main([*args, "--limit", "6"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 6


def test_cli_rejects_dataset_of_wrong_shape(tmp_path):
    model = _tiny_teacher_dir(tmp_path / "m")
    _write_image_folder(tmp_path / "data", "test", 16, per_class=1)
    with pytest.raises(ValueError, match=r"\(16, 16, 3\).*expects \(32, 32, 3\)"):
        evaluate.main(["--model", str(model), "--data_dir", str(tmp_path / "data")])


def test_check_dataset_rejects_class_count():
    meta = {"arch": "x", "input_shape": [32, 32, 3], "num_classes": 10}
    with pytest.raises(ValueError, match=r"100 classes.*num_classes=10"):
        evaluate.check_dataset((5, 32, 32, 3), 100, meta)


# ------------------------------------------------------------------ real teachers (acceptance)


@pytest.fixture(scope="module")
def cifar10_test(shared_dir):
    from stars_jax.data import load_dataset

    root = shared_dir / "data" / "cifar10-jpeg"
    if not root.is_dir():
        pytest.skip(f"no CIFAR-10 JPEG copy at {root}")
    return load_dataset("image_folder", str(root), "test")


@pytest.mark.parametrize(
    "checkpoint,arch,reported_top1",
    [("cifar10_wrn40_2.pth", "wrn40_2", 90.32), ("cifar10_resnet34_fp16.pth", "resnet34", 90.66)],
)
def test_real_teacher_accuracy(shared_dir, cifar10_test, tmp_path, checkpoint, arch, reported_top1):
    """Full 10,000-image test split; the README's fp32 top-1 within 0.2 points."""
    path = shared_dir / "teachers" / checkpoint
    if not path.is_file():
        pytest.skip(f"no teacher checkpoint at {path}")
    t0 = time.perf_counter()
    out = convert.main(
        ["--arch", arch, "--num_classes", "10", "--checkpoint", str(path), "--out", str(tmp_path)]
    )
    loaded = load_model_dir(out, arch=arch, num_classes=10)
    evaluate.check_dataset(cifar10_test.images.shape, len(cifar10_test.class_names), loaded.meta)
    result = accuracy.evaluate(
        loaded.logits, loaded.variables, cifar10_test.images, cifar10_test.labels, batch_size=200
    )
    print(f"{arch}: {result} total {time.perf_counter() - t0:.1f} s")
    assert result["n"] == 10_000
    assert abs(result["top1"] - reported_top1) <= 0.2, result


# ------------------------------------------------------------------ every tool's command line

TOOL_FLAGS = {
    "evaluate": ("--model", "--data_dir", "--batch_size", "--[no]energy", "--[no]debug"),
    "convert": ("--arch", "--checkpoint", "--out", "--[no]overwrite", "--[no]debug"),
    "teacher": ("--config", "--out", "--[no]debug"),
    "export_bank": ("--workdir", "--out", "--[no]overwrite", "--[no]debug"),
    "export": ("--model", "--format", "--out", "--dt", "--input", "--[no]debug"),
}
BAD_COMMAND_LINES = {  # One line and exit status 2, like the main job's.
    "evaluate": (["--model", "m", "--data_dir", "d", "--batch_size", "0"], "--batch_size=0"),
    "export": (["--model", "m", "--out", "o", "--dt", "0"], "--dt must be > 0"),
    "convert": (["--nonsense"], "Unknown command line flag 'nonsense'"),
}


def test_every_tool_has_absl_help_and_one_line_flag_errors():
    """``--helpfull`` lists each tool's flags and exits 0; a bad flag is one line, exit 2.
    The processes run side by side: each mostly imports JAX."""
    root = Path(__file__).resolve().parents[1]
    start = lambda tool, args: subprocess.Popen(
        [sys.executable, "-m", f"stars_jax.{tool}", *args],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    helps = {tool: start(tool, ["--helpfull"]) for tool in TOOL_FLAGS}
    bads = {tool: start(tool, args) for tool, (args, _) in BAD_COMMAND_LINES.items()}
    for tool, proc in helps.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, (tool, err)
        assert all(f"  {flag}" in out for flag in TOOL_FLAGS[tool]), (tool, out)
    for tool, proc in bads.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2 and "Traceback" not in err, (tool, err)
        assert err.startswith("error: ") and BAD_COMMAND_LINES[tool][1] in err, (tool, err)
        assert len(err.strip().splitlines()) == 2 and "Usage: python -m stars_jax." in err


def test_main_takes_argv_with_or_without_program_name(tmp_path, capsys):
    model = _tiny_teacher_dir(tmp_path / "m")
    _write_image_folder(tmp_path / "data", "test", 32, per_class=1)
    args = ["--model", str(model), "--data_dir", str(tmp_path / "data"), "--noenergy"]
    assert evaluate.main(["evaluate", *args])["n"] == 3
    with pytest.raises(ValueError, match="Unknown command line flag 'bogus'"):
        evaluate.main([*args, "--bogus"])  # ConfigError: main(argv) raises, the CLI exits 2
