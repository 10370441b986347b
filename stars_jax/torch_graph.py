"""A PyTorch CNN as a graph spec (``stars_jax.models.graph``): ``torch.fx`` traces the module,
``ShapeProp`` records every tensor's shape, and each node is translated to one spec op.

Translated: Conv2d (groups, dilation, padding and its modes), BatchNorm2d, Linear, the
activations of ``ACT_MODULES`` as modules, functions or methods, max/avg/adaptive-avg pooling,
flatten/view/reshape, mean, residual add, concat, elementwise multiply, dropout (identity in
eval). Anything else raises ``UntranslatableError`` naming the op and its graph node.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from stars_jax.errors import InputError
from stars_jax.models.graph import SPEC_VERSION

_SHAPE_METHODS = ("size", "dim")  # ints for a view's arguments, not tensors
_NOOP_METHODS = ("contiguous", "clone", "detach")


class UntranslatableError(InputError):
    """A graph node with no Flax translation: nothing is written."""


def module_path(qualname: str) -> list[str]:
    """``layer1.0.conv1`` -> ``["layer1_0", "conv1"]``: the Flax scope of a torch module."""
    path: list[str] = []
    for seg in qualname.split("."):
        if seg.isdigit() and path:
            path[-1] = f"{path[-1]}_{seg}"
        else:
            path.append(seg)
    return path


def _pair(v) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(e) for e in v]


def _shape(node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _refuse(node, what: str, why: str = "no Flax translation") -> UntranslatableError:
    return UntranslatableError(
        f"cannot convert the model: {what} at graph node {node.name!r} ({node.op} "
        f"{node.target!r}) has {why}; nothing was written. Supported: Conv2d, BatchNorm2d, "
        "Linear, ReLU/ReLU6/SiLU/GELU/Hardswish/Hardsigmoid/Sigmoid/Tanh/LeakyReLU, "
        "Max/Avg/AdaptiveAvgPool2d, flatten/view/reshape, mean, +, -, *, /, cat, Dropout, "
        "Identity (docs/own_teacher.md)."
    )


def _conv_padding(node, m, in_shape) -> list[list[int]]:
    if m.padding == "valid":
        return [[0, 0], [0, 0]]
    if m.padding == "same":
        pads = []
        for k, d in zip(m.kernel_size, m.dilation, strict=True):
            total = d * (k - 1)
            pads.append([total // 2, total - total // 2])
        return pads
    return [[p, p] for p in _pair(m.padding)]


def _conv(node, m, in_shape):
    return "conv", {
        "features": m.out_channels,
        "kernel": _pair(m.kernel_size),
        "strides": _pair(m.stride),
        "padding": _conv_padding(node, m, in_shape),
        "dilation": _pair(m.dilation),
        "groups": m.groups,
        "bias": m.bias is not None,
        "pad_mode": m.padding_mode,
    }


def _bn(node, m, in_shape):
    if not m.track_running_stats or m.running_mean is None:
        raise _refuse(node, type(m).__name__, "no running statistics (track_running_stats=False)")
    return "bn", {"eps": float(m.eps), "affine": bool(m.affine)}


def _linear(node, m, in_shape):
    if len(in_shape) != 2:
        raise _refuse(node, "Linear", f"a rank-{len(in_shape)} input (only [B, F] is translated)")
    return "linear", {"features": m.out_features, "bias": m.bias is not None}


def _bound_pool(node, shapes, b: dict, dilation, kind: str) -> dict:
    """``pool_attrs`` of a functional pooling call's bound arguments ``b``."""
    size, stride, pad = b["kernel_size"], b["stride"], b["padding"]
    return pool_attrs(node, shapes[b["input"]], size, stride, pad, dilation, b["ceil_mode"], kind)


def pool_attrs(node, in_shape, kernel, stride, padding, dilation, ceil_mode, kind: str) -> dict:
    """Window, strides and explicit ``[[lo, hi], [lo, hi]]`` padding (ceil_mode as extra
    right padding for max pooling) of a torch max/avg pooling."""
    k, p = _pair(kernel), _pair(padding)
    s = _pair(stride) if stride not in (None, []) else k
    if _pair(dilation) != [1, 1]:
        raise _refuse(node, f"{kind} pooling", f"dilation {dilation}")
    pads = [[pi, pi] for pi in p]
    if ceil_mode:
        if kind != "max":
            raise _refuse(node, f"{kind} pooling", "ceil_mode=True")
        for i, size in enumerate(in_shape[2:]):
            out = -(-(size + 2 * p[i] - k[i]) // s[i]) + 1
            if (out - 1) * s[i] >= size + p[i]:
                out -= 1
            pads[i][1] = max(p[i], (out - 1) * s[i] + k[i] - size - p[i])
    return {"window": k, "strides": s, "padding": pads}


def _max_pool_module(node, m, in_shape):
    if m.return_indices:
        raise _refuse(node, "MaxPool2d", "return_indices=True")
    return "max_pool", pool_attrs(
        node, in_shape, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, "max"
    )


def _avg_pool_module(node, m, in_shape):
    if m.divisor_override:
        raise _refuse(node, "AvgPool2d", "divisor_override")
    attrs = pool_attrs(node, in_shape, m.kernel_size, m.stride, m.padding, 1, m.ceil_mode, "avg")
    return "avg_pool", {**attrs, "count_include_pad": bool(m.count_include_pad)}


def adaptive_out(output_size, in_shape) -> list[int]:
    out = [output_size] * 2 if isinstance(output_size, int) else list(output_size)
    return [int(in_shape[2 + i]) if o is None else int(o) for i, o in enumerate(out)]


def _act_module(fn: str):
    return lambda node, m, in_shape: ("act", {"fn": fn})


def _gelu_module(node, m, in_shape):
    return "act", {"fn": "gelu_tanh" if m.approximate == "tanh" else "gelu"}


def _module_translators() -> dict:
    import torch.nn as tnn

    acts = {
        tnn.ReLU: "relu",
        tnn.ReLU6: "relu6",
        tnn.SiLU: "silu",
        tnn.Hardswish: "hardswish",
        tnn.Hardsigmoid: "hardsigmoid",
        tnn.Sigmoid: "sigmoid",
        tnn.Tanh: "tanh",
        tnn.Identity: "identity",
        tnn.Dropout: "identity",
        tnn.Dropout2d: "identity",
        tnn.AlphaDropout: "identity",
    }
    table = {cls: _act_module(fn) for cls, fn in acts.items()}
    table.update(
        {
            tnn.Conv2d: _conv,
            tnn.BatchNorm2d: _bn,
            tnn.Linear: _linear,
            tnn.GELU: _gelu_module,
            tnn.MaxPool2d: _max_pool_module,
            tnn.AvgPool2d: _avg_pool_module,
            tnn.AdaptiveAvgPool2d: lambda n, m, s: (
                "adaptive_avg_pool",
                {"out": adaptive_out(m.output_size, s)},
            ),
            tnn.Hardtanh: lambda n, m, s: ("hardtanh", {"min": m.min_val, "max": m.max_val}),
            tnn.LeakyReLU: lambda n, m, s: ("leaky_relu", {"slope": m.negative_slope}),
            tnn.Flatten: lambda n, m, s: ("reshape", None),
        }
    )
    return table


# Functions and methods: (spec op or handler, argument names with defaults). A handler takes
# (node, bound arguments) and returns (op, tensor arguments, attrs).
_BINARY = {"add": "add", "iadd": "add", "sub": "sub", "isub": "sub", "mul": "mul"}
_BINARY.update({"imul": "mul", "truediv": "div", "itruediv": "div", "div": "div"})
_ACT_FUNCS = ("relu", "relu6", "silu", "hardswish", "hardsigmoid", "sigmoid", "tanh")
_DROPOUT = ("dropout", "dropout2d", "alpha_dropout", "feature_alpha_dropout")
_POOL_ARGS = ("input", "kernel_size", ("stride", None), ("padding", 0))


def _bind(node, names: Sequence, args, kwargs) -> dict:
    """Binds positional and keyword arguments to ``names`` (``name`` or ``(name, default)``)."""
    out, keys = {}, [n if isinstance(n, str) else n[0] for n in names]
    for key, value in zip(keys, args, strict=False):
        out[key] = value
    out.update(kwargs)
    for n in names:
        if not isinstance(n, str):
            out.setdefault(n[0], n[1])
    if len(args) > len(keys) or set(out) - set(keys) or set(keys[:1]) - set(out):
        raise _refuse(
            node,
            node.target if isinstance(node.target, str) else node.target.__name__,
            f"arguments it does not take here ({args}, {kwargs})",
        )
    return out


def _fn_name(node) -> str:
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", str(t)).lstrip("_")


def _translate_call(node, shapes: Mapping) -> tuple[str, list, dict | None]:
    """A call_function / call_method node as ``(op, tensor args, attrs)``; ``op`` "alias"
    passes its only argument through (dropout, contiguous)."""
    name = _fn_name(node)
    args, kwargs = list(node.args), dict(node.kwargs)
    if name in _BINARY and len(args) == 2 and not kwargs:
        return _BINARY[name], args, {}
    if name in _ACT_FUNCS:
        b = _bind(node, ("input", ("inplace", False)), args, kwargs)
        return "act", [b["input"]], {"fn": name}
    if name == "gelu":
        b = _bind(node, ("input", ("approximate", "none")), args, kwargs)
        return "act", [b["input"]], {"fn": "gelu_tanh" if b["approximate"] == "tanh" else "gelu"}
    if name == "leaky_relu":
        b = _bind(node, ("input", ("negative_slope", 0.01), ("inplace", False)), args, kwargs)
        return "leaky_relu", [b["input"]], {"slope": float(b["negative_slope"])}
    if name == "hardtanh":
        names = ("input", ("min_val", -1.0), ("max_val", 1.0), ("inplace", False))
        b = _bind(node, names, args, kwargs)
        return "hardtanh", [b["input"]], {"min": float(b["min_val"]), "max": float(b["max_val"])}
    if name in _DROPOUT or name in _NOOP_METHODS:
        return "alias", args[:1], None
    if name in ("flatten", "view", "reshape"):
        return "reshape", args[:1], None
    if name in ("cat", "concat", "concatenate"):
        b = _bind(node, ("tensors", ("dim", 0)), args, kwargs)
        return "cat", list(b["tensors"]), {"dim": int(b["dim"])}
    if name == "mean":
        b = _bind(node, ("input", ("dim", None), ("keepdim", False)), args, kwargs)
        dims = b["dim"]
        dims = list(range(len(shapes[b["input"]]))) if dims is None else dims
        dims = [dims] if isinstance(dims, int) else list(dims)
        return "mean", [b["input"]], {"dims": dims, "keepdim": bool(b["keepdim"])}
    return _translate_pool_call(node, name, args, kwargs, shapes)


def _translate_pool_call(node, name, args, kwargs, shapes):
    if name == "adaptive_avg_pool2d":
        b = _bind(node, ("input", "output_size"), args, kwargs)
        out = adaptive_out(b["output_size"], shapes[b["input"]])
        return "adaptive_avg_pool", [b["input"]], {"out": out}
    if name in ("max_pool2d", "max_pool2d_with_indices", "boolean_dispatch"):
        names = (*_POOL_ARGS, ("dilation", 1), ("ceil_mode", False), ("return_indices", False))
        b = _bind(node, names, args, kwargs)
        if b["return_indices"]:
            raise _refuse(node, "max_pool2d", "return_indices=True")
        return "max_pool", [b["input"]], _bound_pool(node, shapes, b, b["dilation"], "max")
    if name == "avg_pool2d":
        names = (
            *_POOL_ARGS,
            ("ceil_mode", False),
            ("count_include_pad", True),
            ("divisor_override", None),
        )
        b = _bind(node, names, args, kwargs)
        if b["divisor_override"]:
            raise _refuse(node, "avg_pool2d", "divisor_override")
        attrs = _bound_pool(node, shapes, b, 1, "avg")
        return "avg_pool", [b["input"]], {**attrs, "count_include_pad": b["count_include_pad"]}
    raise _refuse(node, name)


def _trace(module, input_shape: Sequence[int], batch: int):
    """``torch.fx`` graph of ``module`` with every node's shape recorded (eval mode)."""
    import torch
    import torch.fx
    from torch.fx.passes.shape_prop import ShapeProp

    module.eval()
    try:
        gm = torch.fx.symbolic_trace(module)
    except Exception as e:  # fx raises TraceError, TypeError, RuntimeError ... on dynamic code
        raise UntranslatableError(
            f"torch.fx cannot trace {type(module).__name__} ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); control flow on tensor values or "
            "non-torch calls in forward() cannot be converted; nothing was written."
        ) from e
    h, w, c = input_shape
    with torch.no_grad():
        ShapeProp(gm).propagate(torch.zeros(batch, c, h, w))
    return gm


def _check_args(node, args, tensors: Mapping, shapes: Mapping) -> list:
    """Spec arguments: a tensor node's name or a number; ranks of a binary op must agree."""
    out = []
    for a in args:
        if hasattr(a, "op"):  # an fx Node
            if a not in tensors:
                raise _refuse(node, _fn_name(node), f"a non-tensor argument {a.name!r}")
            out.append(tensors[a])
        elif isinstance(a, bool) or not isinstance(a, int | float):
            raise _refuse(node, _fn_name(node), f"a constant argument {a!r} of {type(a).__name__}")
        else:
            out.append(float(a))
    ranks = {len(shapes[a]) for a in args if hasattr(a, "op")}
    if len(ranks) > 1:
        raise _refuse(node, _fn_name(node), f"inputs of ranks {sorted(ranks)} (broadcast)")
    return out


def _translate_node(node, gm, shapes, modules_table):
    """One call node as ``(op, fx args, attrs, module path or None)``."""
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        handler = modules_table.get(type(m))
        if handler is None:
            raise _refuse(node, type(m).__name__)
        op, attrs = handler(node, m, shapes[node.args[0]])
        path = module_path(node.target) if op in ("conv", "bn", "linear") else None
        return (
            ("alias" if op == "act" and attrs["fn"] == "identity" else op),
            node.args[:1],
            attrs,
            path,
        )
    if node.op in ("call_function", "call_method"):
        op, args, attrs = _translate_call(node, shapes)
        return op, args, attrs, None
    raise _refuse(node, str(node.target), "no Flax translation (get_attr: use a registered module)")


def graph_spec(module, input_shape: Sequence[int], batch: int = 2) -> dict:
    """The graph spec (``stars_jax.models.graph``) of a torch ``module`` taking NCHW images.

    Args:
      module: an ``nn.Module`` that ``torch.fx.symbolic_trace`` can trace; put in eval mode.
      input_shape: ``(H, W, C)`` of one image.

    Raises:
      UntranslatableError: naming the first op without a translation and its graph node.
    """
    gm = _trace(module, input_shape, batch)
    table = _module_translators()
    shapes = {n: _shape(n) for n in gm.graph.nodes}
    tensors: dict[Any, str] = {}  # fx node -> the spec name holding its value
    nodes, spec_in, spec_out, last_linear = [], None, None, None
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if spec_in is not None:
                raise _refuse(node, "a second input", "no translation (one image input only)")
            spec_in = tensors[node] = node.name
        elif node.op == "output":
            spec_out = node.args[0]
        elif shapes[node] is None:  # x.size(0) and the like: only a view's arguments
            if _fn_name(node) not in (*_SHAPE_METHODS, "getitem", "getattr"):
                raise _refuse(node, _fn_name(node), "a non-tensor result")
        else:
            op, args, attrs, path = _translate_node(node, gm, shapes, table)
            if op == "reshape":
                attrs = _reshape_attrs(node, shapes[args[0]], shapes[node])
            spec_args = _check_args(node, args, tensors, shapes)
            if op == "alias":
                tensors[node] = spec_args[0]
                continue
            tensors[node] = node.name
            if op == "linear":
                last_linear = spec_args[0]
            nodes.append(
                {"name": node.name, "op": op, "args": spec_args, "module": path, "attrs": attrs}
            )
    return _finish(gm, spec_in, spec_out, tensors, shapes, nodes, last_linear)


def _reshape_attrs(node, in_shape, out_shape) -> dict:
    if out_shape[0] != in_shape[0]:
        raise _refuse(
            node, _fn_name(node), f"a reshape across the batch axis {in_shape} -> {out_shape}"
        )
    return {"shape": [int(s) for s in out_shape[1:]]}


def _finish(gm, spec_in, out, tensors, shapes, nodes, last_linear) -> dict:
    if not hasattr(out, "op") or out not in tensors or len(shapes[out]) != 2:
        got = type(out).__name__ if not hasattr(out, "op") else f"shape {shapes.get(out)}"
        raise UntranslatableError(
            f"cannot convert the model: forward() must return one logits tensor [B, K], got "
            f"{got}; wrap the model so it returns only the logits. Nothing was written."
        )
    return {
        "version": SPEC_VERSION,
        "input": spec_in,
        "output": tensors[out],
        "features": last_linear or tensors[out],
        "nodes": nodes,
    }


def used_state_dict(module, spec: Mapping) -> dict[str, np.ndarray]:
    """The float32 numpy entries of ``module.state_dict()`` that the spec's layers use."""
    used = {tuple(n["module"]) for n in spec["nodes"] if n["module"]}
    out = {}
    for key, value in module.state_dict().items():
        qual, _, leaf = key.rpartition(".")
        if tuple(module_path(qual)) in used and leaf != "num_batches_tracked":
            out[key] = value.detach().cpu().float().numpy()
    return out
