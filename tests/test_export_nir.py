"""NIR export (stars_jax.export): the file re-imported with `nir` and run in snntorch, an
independent NIR consumer, must give our per-step logits and spikes on the same images."""

from __future__ import annotations

import dataclasses
import functools
import json
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util

from stars_jax import errors, export
from stars_jax.apply import normalize
from stars_jax.errors import InputError
from stars_jax.model_dir import save_model_dir
from stars_jax.models.students import LIF, SpikingResNet, make_student
from stars_jax.models.teachers import make_teacher
from stars_jax.neurons import LIFParams
from tests.test_evaluate import variable_shapes

nir = pytest.importorskip("nir", reason="NIR export needs the nir package: pip install nir")

NORM = ((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
SIZE, BATCH, K = 8, 3, 4
# No membrane may end a step within this (relative) distance of the threshold: XLA and
# PyTorch round convolutions differently (~1e-6 relative), and only a neuron that close to
# the threshold could then spike in one and not the other. With this margin checked, every
# spike must agree exactly and the logits to float tolerance.
MARGIN = 1e-5


def _variables(model, seed: int) -> dict:
    """Random numpy variables with BN statistics far from identity (no model.init compile)."""
    shapes = variable_shapes(model, SIZE)
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name, shape = path[-1].key, leaf.shape
        if name == "kernel":
            return rng.normal(0, 1.5 * (2 / np.prod(shape[:-1])) ** 0.5, shape)
        low_high = {"scale": (0.8, 1.6), "var": (0.5, 2.0)}.get(name)
        if low_high:
            return rng.uniform(*low_high, shape)
        # Positive biases keep the deeper layers (and the Dense-fed fc1_sn) firing.
        return rng.normal(0.6 if name == "bias" else 0.0, 0.4, shape)  # bias, mean

    return {
        col: jax.tree_util.tree_map_with_path(lambda p, x: fill(p, x).astype(np.float32), tree)
        for col, tree in shapes.items()
        if col in ("params", "batch_stats")
    }


def _ours(model, variables, pixels) -> tuple[np.ndarray, dict]:
    """Our per-step logits [T, B, K] and every LIF layer's spikes [T, B, C, H, W]."""
    t = model.time_steps
    (logits_t, _), state = model.apply(
        variables,
        normalize(pixels, *NORM),
        capture_intermediates=lambda mdl, _: isinstance(mdl, LIF),
        mutable=["intermediates"],
    )
    spikes = {}
    for path, value in traverse_util.flatten_dict(state["intermediates"]).items():
        if path[-1] == "__call__":
            s = np.asarray(value[0]).reshape(t, pixels.shape[0], *value[0].shape[1:])
            s = s.transpose(0, 1, 4, 2, 3) if s.ndim == 5 else s[..., None, None]
            spikes["_".join(path[:-1])] = s  # nirtorch's name for node "layer1_0.sn1"
    return np.asarray(logits_t), spikes


def _snntorch(graph, pixels, time_steps: int) -> tuple[np.ndarray, dict, float]:
    """Runs a NIR graph in snntorch for T steps: per-step outputs [T, B, K], each LIF layer's
    spikes [T, B, ...], and the smallest relative distance of a membrane to its threshold."""
    torch = pytest.importorskip("torch")
    snn = pytest.importorskip("snntorch", reason="the NIR consumer: pip install snntorch")
    pytest.importorskip("nirtorch", reason="snntorch's NIR import needs nirtorch")
    from snntorch.import_nir import import_from_nir

    net = import_from_nir(graph)
    spikes, margins, prev = {}, [np.inf], {}

    def record(name, module, inputs, out):
        mem = prev[name] if prev[name].shape == inputs[0].shape else 0  # the state starts at 0
        h = module.beta.clamp(0, 1) * mem + inputs[0]  # the membrane before this step's reset
        margins.append(float(((h - module.threshold).abs() / module.threshold).min()))
        spikes.setdefault(name, []).append(out.detach().numpy())

    for name, module in net.named_modules():
        if isinstance(module, snn.Leaky):
            module.register_forward_pre_hook(
                lambda m, _, name=name: prev.__setitem__(name, m.mem.detach().clone())
            )
            module.register_forward_hook(functools.partial(record, name))
    x = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        outs = [net(x)[0].numpy().reshape(len(pixels), -1) for _ in range(time_steps)]
    return np.stack(outs), {k: np.stack(v) for k, v in spikes.items()}, min(margins)


def _check_matches(model, variables, graph, seed: int) -> None:
    pixels = np.random.default_rng(seed).uniform(0, 1, (BATCH, SIZE, SIZE, 3)).astype(np.float32)
    logits, spikes = _ours(model, variables, pixels)
    if "normalize" not in graph.nodes:  # exported with input_kind="normalized"
        pixels = np.asarray(normalize(pixels, *NORM))
    theirs, their_spikes, margin = _snntorch(graph, pixels, model.time_steps)
    assert margin > MARGIN, f"a membrane is {margin:.1e} from threshold: pick another seed"
    for name, s in spikes.items():
        rate = s.mean()
        assert 0.02 < rate < 0.98, f"{name} fires at rate {rate:.3f}: an uninformative test"
        np.testing.assert_array_equal(their_spikes[name], s, err_msg=name)
    np.testing.assert_allclose(theirs, logits, rtol=1e-4, atol=1e-5)


def test_cli_exports_resnet_that_snntorch_runs_identically(tmp_path, capsys):
    t, lif = 4, LIFParams()
    model = make_student("resnet_tiny", K, time_steps=t, lif=lif)
    variables = _variables(model, seed=0)
    save_model_dir(
        tmp_path / "student",
        kind="student",
        arch="resnet_tiny",
        num_classes=K,
        variables=variables,
        normalization=NORM,
        input_shape=(SIZE, SIZE, 3),
        extra={"time_steps": t, "lif": dataclasses.asdict(lif)},
    )
    out = tmp_path / "student.nir"
    args = ["--model", str(tmp_path / "student"), "--format", "nir", "--out", str(out)]
    record = export.main(args)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == record
    graph = nir.read(out)
    # BN is folded: no node is left for it, and every convolution carries the BN's bias.
    assert not any("bn" in name for name in graph.nodes)
    assert graph.nodes["layer1_0.conv1"].metadata["folded_batch_norm"] == "layer1_0.bn1"
    lif_node = graph.nodes["layer1_0.sn1"]
    np.testing.assert_allclose(lif_node.tau, lif.tau * export.DEFAULT_DT, rtol=1e-6)
    assert graph.metadata["time_steps"] == t and graph.metadata["dt"] == export.DEFAULT_DT
    np.testing.assert_allclose(graph.metadata["normalization_std"], NORM[1])
    # Residual: the block's second LIF sums conv2 and the identity shortcut (sn1).
    assert {("layer1_0.conv2", "layer1_0.sn2"), ("sn1", "layer1_0.sn2")} <= set(graph.edges)
    _check_matches(model, variables, graph, seed=1)


@pytest.mark.parametrize(
    "arch, lif, input_kind",
    [
        ("vgg_tiny", LIFParams(), "pixels"),
        # A hard reset to v_reset != 0 and a non-default tau exercise the shifted LIF mapping.
        ("wrn_tiny", LIFParams(tau=1.5, v_threshold=0.8, v_reset=-0.2), "pixels"),
        ("resnet_hidden", LIFParams(tau=3.0), "normalized"),  # resnet19's fc1 + LIF head
    ],
)
def test_other_students_match_snntorch(arch, lif, input_kind, tmp_path):
    t = 4  # tau = 3 needs a few steps to charge fc1_sn
    if arch == "resnet_hidden":
        model = SpikingResNet((1, 1), (8, 16), K, t, lif, hidden=8)
    else:
        model = make_student(arch, K, time_steps=t, lif=lif)
    variables = _variables(model, seed=2)
    graph = export.student_to_nir(
        model,
        variables,
        input_shape=(SIZE, SIZE, 3),
        normalization=NORM,
        input_kind=input_kind,
    )
    nir.write(tmp_path / "student.nir", graph)
    _check_matches(model, variables, nir.read(tmp_path / "student.nir"), seed=3)


def test_membrane_exactly_at_threshold_fires_in_both():
    # The stem outputs exactly 2.0 everywhere (zero kernel, BN scale 0, bias 2), so with
    # tau = 2 the first step's membrane is exactly V_th = 1: we fire (>=); NIR fires on >,
    # which the export's threshold one float32 step lower turns into the same spike.
    model = make_student("resnet_tiny", K, time_steps=2)
    variables = _variables(model, seed=0)
    variables["params"]["conv1"]["kernel"][:] = 0
    variables["params"]["bn1"]["scale"][:] = 0
    variables["params"]["bn1"]["bias"][:] = 2.0
    graph = export.student_to_nir(model, variables, input_shape=(SIZE, SIZE, 3), normalization=NORM)
    pixels = np.zeros((1, SIZE, SIZE, 3), np.float32)
    _, spikes = _ours(model, variables, pixels)
    _, their_spikes, _ = _snntorch(graph, pixels, model.time_steps)
    assert spikes["sn1"][0].all()
    np.testing.assert_array_equal(their_spikes["sn1"], spikes["sn1"])


def test_refuses_what_nir_cannot_express(tmp_path):
    soft = make_student("resnet_tiny", K, time_steps=2, lif=LIFParams(v_reset=None))
    with pytest.raises(InputError, match="soft reset"):
        export.student_to_nir(
            soft, _variables(soft, 0), input_shape=(SIZE, SIZE, 3), normalization=NORM
        )
    teacher = make_teacher("resnet_tiny", K)
    save_model_dir(
        tmp_path / "teacher",
        kind="teacher",
        arch="resnet_tiny",
        num_classes=K,
        variables=_variables(teacher, 0),
        normalization=NORM,
        input_shape=(SIZE, SIZE, 3),
    )
    with pytest.raises(InputError, match="needs a spiking student"):
        export.export_nir(tmp_path / "teacher", tmp_path / "t.nir")


def test_missing_nir_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "nir", None)  # makes `import nir` fail
    with pytest.raises(errors.MissingDependencyError, match="pip install"):
        export._nir()
