"""A teacher rebuilt from a graph spec: the JSON that ``stars_jax.torch_graph`` writes from a
``torch.fx`` trace, so that a converted PyTorch CNN runs without the code that defined it.

Spec (``model.json["graph"]``)::

    {"version": 1, "input": NAME, "output": NAME, "features": NAME,
     "nodes": [{"name", "op", "args": [NAME | number, ...], "module": [seg, ...] | None,
                "attrs": {...}}, ...]}

Nodes are in execution order. Tensors of rank 4 are NHWC here where torch's are NCHW; every
op that names an axis (``cat``, ``mean``, ``reshape``) maps torch's axes (``TORCH_TO_NHWC``).
Layers with variables live at their torch module path with numeric segments joined to the
previous one (``layer1.0.bn1`` -> ``layer1_0/bn1``), as in ``stars_jax.convert``; every
BatchNorm sows its input like the shipped teachers, so synthesis finds them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from stars_jax.models.layers import BatchNorm

GRAPH_ARCH = "graph"
SPEC_VERSION = 1
TORCH_TO_NHWC = {0: 0, 1: 3, 2: 1, 3: 2}  # torch axis of an NCHW tensor -> NHWC axis
_PAD_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def nhwc_axis(axis: int, rank: int) -> int:
    """Our axis for torch's ``axis`` of a rank-``rank`` tensor (only rank 4 is permuted)."""
    axis = axis % rank
    return TORCH_TO_NHWC[axis] if rank == 4 else axis


def _to_nchw(x):
    return jnp.transpose(x, (0, 3, 1, 2)) if x.ndim == 4 else x


def _from_nchw(x):
    return jnp.transpose(x, (0, 2, 3, 1)) if x.ndim == 4 else x


def reshape(x, shape: Sequence[int]):
    """torch's ``view``/``flatten`` to ``[B, *shape]``: in NCHW order, so a flatten before a
    Linear orders features as torch does."""
    return _from_nchw(_to_nchw(x).reshape((x.shape[0], *shape)))


def adaptive_avg_pool(x, out: Sequence[int]):
    """torch's ``adaptive_avg_pool2d`` on NHWC: bin i spans [floor(i H / o), ceil((i+1) H / o))."""
    (h, w), (oh, ow) = x.shape[1:3], out
    if h % oh == 0 and w % ow == 0:
        b, c = x.shape[0], x.shape[3]
        return x.reshape(b, oh, h // oh, ow, w // ow, c).mean(axis=(2, 4))
    rows = []
    for i in range(oh):
        r0, r1 = (i * h) // oh, -((-(i + 1) * h) // oh)
        cols = []
        for j in range(ow):
            c0, c1 = (j * w) // ow, -((-(j + 1) * w) // ow)
            cols.append(x[:, r0:r1, c0:c1, :].mean(axis=(1, 2)))
        rows.append(jnp.stack(cols, axis=1))
    return jnp.stack(rows, axis=1)


def _hardtanh(x, lo, hi):
    return jnp.clip(x, lo, hi)


ACTIVATIONS: dict[str, Callable] = {
    "relu": nn.relu,
    "relu6": jax.nn.relu6,
    "silu": nn.silu,
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
    "hardswish": jax.nn.hard_swish,
    "hardsigmoid": jax.nn.hard_sigmoid,
    "sigmoid": nn.sigmoid,
    "tanh": jnp.tanh,
    "identity": lambda x: x,
}


def _pool(attrs, fn, x, **kw):
    return fn(
        x,
        tuple(attrs["window"]),
        tuple(attrs["strides"]),
        tuple(map(tuple, attrs["padding"])),
        **kw,
    )


def _mean(a, x):
    axes = tuple(nhwc_axis(d, x.ndim) for d in a["dims"])
    return jnp.mean(x, axis=axes, keepdims=a["keepdim"])


# Ops without variables: (attrs, *inputs) -> output.
FUNCTIONS: dict[str, Callable] = {
    "act": lambda a, x: ACTIVATIONS[a["fn"]](x),
    "hardtanh": lambda a, x: _hardtanh(x, a["min"], a["max"]),
    "leaky_relu": lambda a, x: nn.leaky_relu(x, a["slope"]),
    "max_pool": lambda a, x: _pool(a, nn.max_pool, x),
    "avg_pool": lambda a, x: _pool(a, nn.avg_pool, x, count_include_pad=a["count_include_pad"]),
    "adaptive_avg_pool": lambda a, x: adaptive_avg_pool(x, a["out"]),
    "reshape": lambda a, x: reshape(x, a["shape"]),
    "mean": _mean,
    "add": lambda a, x, y: x + y,
    "sub": lambda a, x, y: x - y,
    "mul": lambda a, x, y: x * y,
    "div": lambda a, x, y: x / y,
    "cat": lambda a, *xs: jnp.concatenate(xs, axis=nhwc_axis(a["dim"], xs[0].ndim)),
}
LAYERS = ("conv", "bn", "linear")  # ops with variables, at a module path


def make_layer(op: str, attrs: dict, train: bool, dtype: Any) -> Callable[[str], nn.Module]:
    """``name -> Flax layer`` for a node with variables."""
    if op == "conv":
        return lambda name: nn.Conv(
            attrs["features"],
            tuple(attrs["kernel"]),
            strides=tuple(attrs["strides"]),
            padding="VALID"
            if attrs["pad_mode"] != "zeros"
            else tuple(map(tuple, attrs["padding"])),
            kernel_dilation=tuple(attrs["dilation"]),
            feature_group_count=attrs["groups"],
            use_bias=attrs["bias"],
            dtype=dtype,
            name=name,
        )
    if op == "bn":
        return lambda name: BatchNorm(
            use_running_average=not train,
            epsilon=attrs["eps"],
            use_scale=attrs["affine"],
            use_bias=attrs["affine"],
            dtype=dtype,
            name=name,
        )
    if op == "linear":
        return lambda name: nn.Dense(
            attrs["features"], use_bias=attrs["bias"], dtype=dtype, name=name
        )
    raise ValueError(f"Unknown layer op {op!r}; valid: {LAYERS}.")


def _pad_input(node, x):
    """Non-zero conv padding modes pad explicitly, then the conv pads nothing."""
    a = node["attrs"]
    if node["op"] != "conv" or a["pad_mode"] == "zeros":
        return x
    pads = ((0, 0), *map(tuple, a["padding"]), (0, 0))
    return jnp.pad(x, pads, mode=_PAD_MODES[a["pad_mode"]])


class _Scope(nn.Module):
    """A namespace: one segment of a torch module path, holding the layers below it."""

    @nn.compact
    def __call__(self, path: Sequence[str], make: Callable, x):
        head, *rest = path
        if rest:
            return _Scope(name=head)(rest, make, x)
        return make(head)(x)


class GraphTeacher(nn.Module):
    """The teacher a graph spec describes: ``x [B, H, W, C] -> (logits [B, K], features)``.

    ``spec_json`` is the spec as a JSON string (hashable, as module fields should be);
    ``features`` are the spec's ``features`` node (the input of the last Linear).
    """

    spec_json: str
    num_classes: int = 10
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        spec = json.loads(self.spec_json)
        values = {spec["input"]: x.astype(self.dtype)}
        tops: dict[str, nn.Module] = {}  # one Flax module per top-level torch path segment
        for node in spec["nodes"]:
            args = [values[a] if isinstance(a, str) else a for a in node["args"]]
            if node["op"] in LAYERS:
                make = make_layer(node["op"], node["attrs"], train, self.dtype)
                head, *rest = node["module"]
                if head not in tops:
                    tops[head] = _Scope(name=head) if rest else make(head)
                inp = _pad_input(node, args[0])
                values[node["name"]] = tops[head](rest, make, inp) if rest else tops[head](inp)
            else:
                values[node["name"]] = FUNCTIONS[node["op"]](node["attrs"], *args)
        logits = values[spec["output"]].astype(jnp.float32)
        return logits, values[spec["features"]].astype(jnp.float32)
