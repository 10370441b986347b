"""Export a distilled spiking student to NIR, the Neuromorphic Intermediate Representation.

    python -m stars_jax.export --model STUDENT_DIR --format nir --out student.nir

The graph is one time step of the student; a consumer runs it T times (``time_steps`` in the
graph metadata) on the same input and averages the outputs over the steps, as the student does.

* Input: the image as ``[C, H, W]`` floats in [0, 1], presented at every step (direct
  encoding). The dataset normalisation is the graph's first node, ``normalize`` (a 1x1
  convolution with a diagonal kernel): folding it into the stem convolution would be wrong at
  the borders, where the stem zero-pads the *normalised* image. ``--input normalized`` leaves
  it out (the consumer normalises); the mean and std are in the metadata either way.
* Convolution + BatchNorm (running statistics) -> one ``Conv2d`` with the BN folded into its
  kernel and bias. A BN that does not follow a convolution (the WRN's pre-activation BNs, on a
  residual sum) -> a 1x1 ``Conv2d`` with a diagonal kernel. Grouped (depthwise) convolutions
  would be smaller, but snntorch's importer builds ``Conv2d(in_channels=weight.shape[1])`` and
  so cannot load them.
* Residual adds -> several edges into one node (NIR sums a node's inputs).
* Max-pooling (VGG) sees spikes only, so it is a logical OR: ``AvgPool2d`` 2x2 followed by a
  memoryless threshold unit (a LIF with ``tau = dt``, threshold 1/8: fires iff any of the four
  inputs spiked).
* Global average pool -> ``AvgPool2d`` over the whole map; each Dense -> a 1x1 ``Conv2d``, so
  the output is ``[K, 1, 1]`` (no ``Flatten``: NIR counts its dims without the batch axis,
  while nirtorch and snntorch pass them to ``torch.nn.Flatten`` with it).
* LIF: ours is ``H = V + (X - (V - V_reset)) / tau`` per step, spike ``H >= V_th``, hard reset
  to ``V_reset``, ``V_0 = V_reset``. With ``U = V - V_reset`` that is a LIF at rest 0 with
  threshold ``V_th - V_reset``, reset to 0, starting at 0, which is NIR's
  ``tau_n dU/dt = (v_leak - U) + r I`` stepped by forward Euler at ``dt`` with
  ``tau_n = tau * dt``, ``r = 1``, ``v_leak = v_reset = 0``, ``v_threshold = V_th - V_reset``.
  ``dt`` (``--dt``, default 1e-4 s) is stated in the metadata; 1e-4 is the step snntorch's
  importer assumes, which then runs ``mem = (1 - 1/tau) mem + I`` against threshold
  ``tau (V_th - V_reset)``: our membrane times tau. NIR fires on ``U > v_threshold`` and we on
  ``>=``, so ``v_threshold`` is stored one float32 step below ``V_th - V_reset``. The soft
  reset (``v_reset=None``) has no NIR form and is refused.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from absl import flags

import stars_jax
from stars_jax import cli, errors
from stars_jax.model_dir import atomic_write, load_model_dir
from stars_jax.models.layers import BatchNorm
from stars_jax.models.students import SpikingResNet, SpikingVGG, SpikingWideResNet
from stars_jax.neurons import LIFParams

FORMATS = ("nir",)
INPUTS = ("pixels", "normalized")
DEFAULT_DT = 1e-4  # seconds per step; the step snntorch's NIR importer assumes
BN_EPS = BatchNorm.epsilon
_INSTALL = "pip install -e '.[nir]'"

Sources = tuple[str, ...]  # the NIR nodes whose outputs, summed, make one activation


def _nir():
    try:
        import nir
    except ImportError as err:
        raise errors.MissingDependencyError(
            f"NIR export needs the `nir` package: {_INSTALL} (or `pip install nir`)."
        ) from err
    return nir


class _Builder:
    """NIR nodes and edges under construction, and each node's output shape ``(C, H, W)``."""

    def __init__(self, variables: Mapping):
        self.variables = variables
        self.nodes: dict = {}
        self.edges: list[tuple[str, str]] = []
        self.shapes: dict[str, tuple[int, ...]] = {}

    def add(self, name: str, node, inputs: Sources, shape: Sequence[int]) -> Sources:
        assert name not in self.nodes, f"duplicate NIR node {name}"
        self.nodes[name] = node
        self.edges += [(src, name) for src in inputs]
        self.shapes[name] = tuple(int(s) for s in shape)
        return (name,)

    def shape(self, x: Sources) -> tuple[int, ...]:
        return self.shapes[x[0]]

    def get(self, collection: str, path: str) -> dict:
        tree = self.variables[collection]
        for key in path.split("."):
            tree = tree[key]
        return {k: np.asarray(v, np.float64) for k, v in tree.items()}


def bn_affine(params: Mapping, stats: Mapping, eps: float = BN_EPS):
    """Inference BN as ``x * scale + shift`` per channel (float64)."""
    scale = np.asarray(params["scale"], np.float64) / np.sqrt(np.asarray(stats["var"]) + eps)
    return scale, np.asarray(params["bias"], np.float64) - np.asarray(stats["mean"]) * scale


def fold_bn(kernel, params: Mapping, stats: Mapping, eps: float = BN_EPS):
    """A Flax kernel ``[kh, kw, in, out]`` and the BN after it -> NIR ``(weight [out, in, kh,
    kw], bias [out])``, float32."""
    scale, shift = bn_affine(params, stats, eps)
    weight = np.asarray(kernel, np.float64).transpose(3, 2, 0, 1) * scale[:, None, None, None]
    return weight.astype(np.float32), shift.astype(np.float32)


def _conv(b: _Builder, name: str, x: Sources, weight, bias, stride: int = 1, **meta) -> Sources:
    """A PyTorch-style convolution (padding ``k // 2``) of the summed ``x``."""
    nir = _nir()
    c, h, w = b.shape(x)
    k = weight.shape[-1]
    pad = k // 2
    node = nir.Conv2d(
        input_shape=(h, w),
        weight=np.asarray(weight, np.float32),
        stride=(stride, stride),
        padding=(pad, pad),
        dilation=(1, 1),
        groups=1,
        bias=np.asarray(bias, np.float32),
        metadata=dict(meta),
    )
    out = [(s + 2 * pad - k) // stride + 1 for s in (h, w)]
    return b.add(name, node, x, (weight.shape[0], *out))


def _conv_bn(b: _Builder, conv: str, x: Sources, bn: str | None, stride: int = 1) -> Sources:
    """Our conv (no bias) and, if ``bn``, the BN folded into it; named after the conv."""
    kernel = b.get("params", conv)["kernel"]
    if bn is None:
        weight = kernel.transpose(3, 2, 0, 1)
        return _conv(b, conv, x, weight, np.zeros(weight.shape[0]), stride)
    weight, bias = fold_bn(kernel, b.get("params", bn), b.get("batch_stats", bn))
    return _conv(b, conv, x, weight, bias, stride, folded_batch_norm=bn)


def _channel_affine(b: _Builder, name: str, x: Sources, scale, shift, **meta) -> Sources:
    """``x * scale + shift`` per channel, as a 1x1 convolution with a diagonal kernel."""
    weight = np.diag(np.asarray(scale, np.float64))[:, :, None, None]
    return _conv(b, name, x, weight, shift, **meta)


def _bn(b: _Builder, name: str, x: Sources) -> Sources:
    """A BN that follows no convolution (it acts on a residual sum)."""
    scale, shift = bn_affine(b.get("params", name), b.get("batch_stats", name))
    return _channel_affine(b, name, x, scale, shift, batch_norm=name)


def _lif_node(shape, tau: float, threshold: float, dt: float):
    # float64, so that a consumer's dt / tau is exact for tau = 2 ** k (snntorch: beta = 0.5).
    full = lambda v: np.full(shape, v, np.float64)
    return _nir().LIF(
        tau=full(tau * dt),
        r=full(1.0),
        v_leak=full(0.0),
        v_threshold=full(threshold),
        v_reset=full(0.0),
    )


def _lif(b: _Builder, name: str, x: Sources, lif: LIFParams, dt: float) -> Sources:
    """Our LIF layer, shifted by ``v_reset`` so that NIR's rest, reset and start are all 0.

    NIR fires on ``U > v_threshold``, we on ``>=``: the threshold one float32 step lower makes
    the two agree for float32 membranes, even exactly at the threshold (which real images,
    with their flat backgrounds, do reach).
    """
    shape = b.shape(x)
    threshold = np.nextafter(np.float32(lif.v_threshold - lif.v_reset), np.float32(-np.inf))
    return b.add(name, _lif_node(shape, lif.tau, float(threshold), dt), x, shape)


def _avg_pool(b: _Builder, name: str, x: Sources, kernel: Sequence[int]) -> Sources:
    c, h, w = b.shape(x)
    node = _nir().AvgPool2d(
        kernel_size=np.asarray(kernel), stride=np.asarray(kernel), padding=np.zeros(2, int)
    )
    return b.add(name, node, x, (c, h // kernel[0], w // kernel[1]))


def _spike_max_pool(b: _Builder, name: str, x: Sources, dt: float) -> Sources:
    """2x2 max-pool of spikes = OR: the mean of 4 spikes is > 1/8 iff one of them is 1. A LIF
    with tau = dt has no memory (``U = I``), and its input is never between 0 and 1/8."""
    avg = _avg_pool(b, f"{name}.avg", x, (2, 2))
    shape = b.shape(avg)
    return b.add(name, _lif_node(shape, 1.0, 1 / 8, dt), avg, shape)


def _dense(b: _Builder, name: str, x: Sources) -> Sources:
    """A Dense layer on ``[C, 1, 1]``, as a 1x1 convolution."""
    p = b.get("params", name)
    return _conv(b, name, x, p["kernel"].T[:, :, None, None], p["bias"])


def _head(b: _Builder, x: Sources, lif: LIFParams, dt: float, hidden: bool = False) -> Sources:
    """Global average pool, [``fc1`` + LIF ``fc1_sn``,] ``fc`` -> logits ``[K, 1, 1]``."""
    x = _avg_pool(b, "pool", x, b.shape(x)[1:])
    if hidden:
        x = _lif(b, "fc1_sn", _dense(b, "fc1", x), lif, dt)
    return _dense(b, "fc", x)


def _resnet(b: _Builder, model: SpikingResNet, x: Sources, dt: float) -> Sources:
    lif = model.lif_params
    x = _lif(b, "sn1", x, lif, dt)
    for i, (n, width) in enumerate(zip(model.stage_sizes, model.widths, strict=True)):
        for j in range(n):
            p, stride = f"layer{i + 1}_{j}", 2 if i > 0 and j == 0 else 1
            y = _conv_bn(b, f"{p}.conv1", x, f"{p}.bn1", stride)
            y = _lif(b, f"{p}.sn1", y, lif, dt)
            y = _conv_bn(b, f"{p}.conv2", y, f"{p}.bn2")
            if stride != 1 or b.shape(x)[0] != width:
                x = _conv_bn(b, f"{p}.shortcut_0", x, f"{p}.shortcut_1", stride)
            x = _lif(b, f"{p}.sn2", y + x, lif, dt)
    return _head(b, x, lif, dt, hidden=bool(model.hidden))


def _vgg(b: _Builder, model: SpikingVGG, x: Sources, dt: float) -> Sources:
    lif = model.lif_params
    x = _lif(b, "sn1", x, lif, dt)
    for g, widths in enumerate(model.groups):
        for j in range(1 if g == 0 else 0, len(widths)):  # the stem is group 0's first conv
            x = _conv_bn(b, f"block{g}_conv{j}", x, f"block{g}_bn{j}")
            x = _lif(b, f"block{g}_sn{j}", x, lif, dt)
        if g < len(model.groups) - 1 and b.shape(x)[1] > 1:
            x = _spike_max_pool(b, f"pool{g}", x, dt)
    return _head(b, x, lif, dt)


def _wrn(b: _Builder, model: SpikingWideResNet, x: Sources, dt: float) -> Sources:
    lif, n = model.lif_params, (model.depth - 4) // 6
    for i, m in enumerate((1, 2, 4)):
        for j in range(n):
            p, stride = f"block{i + 1}_{j}", 2 if i > 0 and j == 0 else 1
            width = model.base * model.widen * m
            identity = b.shape(x)[0] == width and stride == 1
            o = _lif(b, f"{p}.sn1", _bn(b, f"{p}.bn1", x), lif, dt)
            y = _lif(b, f"{p}.sn2", _conv_bn(b, f"{p}.conv1", o, f"{p}.bn2", stride), lif, dt)
            y = _conv_bn(b, f"{p}.conv2", y, None)
            x = x + y if identity else _conv_bn(b, f"{p}.convShortcut", o, None, stride) + y
    x = _lif(b, "sn_out", _bn(b, "bn_out", x), lif, dt)
    return _head(b, x, lif, dt)


_BODIES: dict[type, Callable] = {
    SpikingResNet: _resnet,
    SpikingVGG: _vgg,
    SpikingWideResNet: _wrn,
}


def _check_exportable(model, dt: float) -> None:
    if type(model) not in _BODIES:
        raise errors.InputError(
            f"NIR export supports the spiking ResNet, VGG and WRN students, not "
            f"{type(model).__name__}; export a student of one of those archs."
        )
    if model.lif_params.v_reset is None:
        raise errors.InputError(
            "NIR's LIF resets to v_reset; this student uses the soft reset (lif v_reset=None, "
            "subtract V_th), which NIR cannot express. Export a student trained with a hard "
            "reset (e.g. lif.v_reset=0.0)."
        )
    if not dt > 0:
        raise errors.ConfigError(f"dt must be > 0 seconds, got {dt}.")


def _metadata(model, input_shape, normalization, dt: float, with_norm: bool) -> dict:
    mean, std = normalization
    return {
        "producer": f"stars_jax {stars_jax.__version__} (python -m stars_jax.export)",
        "dt": float(dt),
        "time_steps": int(model.time_steps),
        "input": (
            f"[C, H, W] = {list(input_shape)}, "
            + ("pixels in [0, 1]" if with_norm else "(pixels in [0, 1] - mean) / std")
            + ", the same image at every step"
        ),
        "normalization_mean": np.asarray(mean, np.float64),
        "normalization_std": np.asarray(std, np.float64),
        "output": "logits [K, 1, 1] per step; the prediction is their mean over time_steps",
        "lif": json.dumps(dataclasses.asdict(model.lif_params)),
        "lif_discretisation": (
            "forward Euler at dt: U += dt / tau * (v_leak - U + r * I); spike when U > "
            "v_threshold, then U = v_reset; U starts at 0"
        ),
    }


def student_to_nir(
    model,
    variables: Mapping,
    *,
    input_shape: Sequence[int],
    normalization: tuple[Sequence[float], Sequence[float]],
    dt: float = DEFAULT_DT,
    input_kind: str = "pixels",
):
    """A spiking student as a ``nir.NIRGraph`` (one time step; see the module docstring).

    Args:
      model: the student's Flax module (a spiking ResNet, VGG or WRN).
      variables: its ``{"params", "batch_stats"}``.
      input_shape: ``(H, W, C)`` of one image, as in ``model.json``.
      normalization: ``(mean [C], std [C])`` of pixels in [0, 1].
      dt: the NIR time step in seconds; each LIF gets ``tau * dt``.
      input_kind: ``"pixels"`` (the graph normalises) or ``"normalized"``.

    Raises:
      InputError: an arch or a neuron (soft reset) that NIR export does not support.
      ConfigError: a bad ``dt`` or ``input_kind``.
    """
    nir = _nir()
    _check_exportable(model, dt)
    if input_kind not in INPUTS:
        raise errors.ConfigError(f"input_kind must be one of {INPUTS}, got {input_kind!r}.")
    h, w, c = (int(s) for s in input_shape)
    b = _Builder(variables)
    x = b.add("input", nir.Input(input_type=np.array([c, h, w])), (), (c, h, w))
    if input_kind == "pixels":
        mean, std = (np.asarray(v, np.float64) for v in normalization)
        x = _channel_affine(b, "normalize", x, 1 / std, -mean / std)
    x = _conv_bn(b, "conv1", x, "bn1")  # the stem, shared by every student
    x = _BODIES[type(model)](b, model, x, dt)
    b.add("output", nir.Output(output_type=np.array(b.shape(x))), x, b.shape(x))
    meta = _metadata(model, (c, h, w), normalization, dt, input_kind == "pixels")
    return nir.NIRGraph(nodes=b.nodes, edges=b.edges, metadata=meta)


def export_nir(
    model_dir, out, *, dt: float = DEFAULT_DT, input_kind: str = "pixels"
) -> tuple[Path, object]:
    """Writes the student in ``model_dir`` to the NIR file ``out``; returns ``(out, graph)``."""
    out = Path(out)
    if not out.parent.is_dir():
        raise errors.MissingInputError(
            f"Output folder {out.parent} does not exist; create it or choose another --out."
        )
    loaded = load_model_dir(model_dir)
    meta = loaded.meta
    if meta["kind"] != "student":
        raise errors.InputError(
            f"{model_dir} holds a {meta['kind']} ({meta['arch']}); NIR export needs a spiking "
            "student directory (the `student` folder of a distillation run's workdir)."
        )
    norm = meta["normalization"]
    graph = student_to_nir(
        loaded.model,
        loaded.variables,
        input_shape=meta["input_shape"],
        normalization=(norm["mean"], norm["std"]),
        dt=dt,
        input_kind=input_kind,
    )
    graph.metadata["arch"] = meta["arch"]
    buf = io.BytesIO()
    _nir().write(buf, graph)
    atomic_write(out, buf.getvalue())  # a reader never sees half a file
    return out, graph


PROG = "python -m stars_jax.export"
USAGE = f"{PROG} --model=STUDENT_DIR --format=nir --out=FILE [--dt=SECONDS] [--input=pixels]"


_DT_HELP = "Seconds per time step (> 0); each LIF's NIR tau is tau * dt (default: snntorch's)."


def define_flags(fv: flags.FlagValues) -> None:
    """The CLI's flags (``stars_jax.cli``)."""
    flags.DEFINE_string(
        "model", None, "Student model directory (stars_jax.model_dir).", flag_values=fv
    )
    flags.DEFINE_enum("format", "nir", FORMATS, "Export format.", flag_values=fv)
    flags.DEFINE_string("out", None, "Output file, e.g. student.nir.", flag_values=fv)
    flags.DEFINE_float("dt", DEFAULT_DT, _DT_HELP, flag_values=fv)
    flags.register_validator("dt", lambda dt: dt > 0, "--dt must be > 0 seconds.", flag_values=fv)
    flags.DEFINE_enum(
        "input",
        "pixels",
        INPUTS,
        "pixels: the graph takes [0, 1] pixels and normalises; normalized: it does not.",
        flag_values=fv,
    )
    flags.DEFINE_bool("debug", False, cli.DEBUG_HELP, flag_values=fv)
    flags.mark_flags_as_required(["model", "out"], flag_values=fv)


def main(argv: Sequence[str] | None = None) -> dict:
    """CLI entry point (``argv`` with or without the program name); prints and returns a
    one-line JSON record of the export."""
    return run(cli.parse(define_flags, argv, PROG))


def run(args: flags.FlagValues) -> dict:
    """Exports as the parsed flags say; prints and returns the JSON record."""
    out, graph = export_nir(args.model, args.out, dt=args.dt, input_kind=args.input)
    kinds: dict[str, int] = {}
    for node in graph.nodes.values():
        kinds[type(node).__name__] = kinds.get(type(node).__name__, 0) + 1
    record = {
        "out": str(out),
        "format": args.format,
        "arch": graph.metadata["arch"],
        "time_steps": graph.metadata["time_steps"],
        "dt": args.dt,
        "input": args.input,
        "nodes": kinds,
        "edges": len(graph.edges),
        "bytes": out.stat().st_size,
    }
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    cli.run_main(define_flags, run, USAGE)
