"""The PyTorch (+ SpikingJelly) way of the two hot steps and of a DFKD round, written for the
side-by-side timing as a careful PyTorch user would write them.

Same architectures (CIFAR ResNet teacher, spiking ResNet student with multi-step LIF), same
losses (L_BN from BN-input hooks, CE, adversarial KL; KD with temperature) and same batch and
T as stars_jax's steps. SpikingJelly's multi-step ``LIFNode`` is used when installed; otherwise
a plain PyTorch LIF with the same ATan surrogate (and the backend name says so).

What a careful user does, and this code does:
- synthesis: both networks frozen (``requires_grad`` off: no weight gradients are computed)
  and in inference mode; the teacher's BN hooks are attached only in this phase;
- KD: no BN hooks at all (``BNStats.detach``), the teacher under ``no_grad``;
- on a GPU ``cudnn.benchmark``; channels-last is a mode suffix (``+cl``), measured.

Run by ``bench_steps.py``, one mode per child process (``--spec`` JSON); prints a
``ROW {json}`` line per measured step or round.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import inspect
import json
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# mode -> (bf16 autocast, torch.compile); any mode may end in "+cl" (channels-last).
MODES = {"eager-fp32": (False, False), "bf16-eager": (True, False), "bf16-compile": (True, True)}


def _conv(cin, cout, k=3, s=1):
    return nn.Conv2d(cin, cout, k, s, k // 2, bias=False)


class Block(nn.Module):
    def __init__(self, cin, cout, stride, spiking_neuron=None):
        super().__init__()
        self.conv1, self.bn1 = _conv(cin, cout, 3, stride), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = _conv(cout, cout), nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(_conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))
        make = spiking_neuron or (lambda: nn.ReLU())
        self.act1, self.act2 = make(), make()

    def forward(self, x):
        y = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet (ANN) or, with ``spiking_neuron``, its spiking twin on [T*B, ...] inputs."""

    def __init__(self, stages, widths, num_classes=10, in_ch=3, spiking_neuron=None, T=1):
        super().__init__()
        self.T, self.spiking = T, spiking_neuron is not None
        self.conv1, self.bn1 = _conv(in_ch, widths[0]), nn.BatchNorm2d(widths[0])
        self.act = (spiking_neuron or (lambda: nn.ReLU()))()
        layers, cin = [], widths[0]
        for i, (n, w) in enumerate(zip(stages, widths, strict=True)):
            for j in range(n):
                layers.append(Block(cin, w, 2 if i and not j else 1, spiking_neuron))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x):
        y = self.bn1(self.conv1(x))
        if self.spiking:  # direct encoding: the stem once, repeated over T (cat keeps layout)
            y = torch.cat([y] * self.T)
        y = self.layers(self.act(y))
        logits = self.linear(F.adaptive_avg_pool2d(y, 1).flatten(1))
        return logits.view(self.T, -1, logits.shape[-1]).mean(0) if self.spiking else logits


class _ATanSpike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alpha):
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return (x >= 0).to(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        a = ctx.alpha
        return g * (a / 2 / (1 + (math.pi / 2 * a * x) ** 2)), None


class PlainLIF(nn.Module):
    """Multi-step LIF over [T*B, ...] (SpikingJelly's equations, hard reset, ATan alpha=2)."""

    def __init__(self, T, tau=2.0, v_th=1.0):
        super().__init__()
        self.T, self.tau, self.v_th = T, tau, v_th

    def forward(self, x):
        xs = x.view(self.T, -1, *x.shape[1:])
        v, out = torch.zeros_like(xs[0]), []
        for t in range(self.T):
            h = v + (xs[t] - v) / self.tau
            s = _ATanSpike.apply(h - self.v_th, 2.0)
            v = h * (1 - s)
            out.append(s)
        return torch.cat(out)  # time-major [T*B, ...]; cat keeps a channels-last layout


def make_neuron(T, prefer_spikingjelly=True):
    """Returns ``(factory, backend_name)`` for the student's neurons.

    SpikingJelly 2.x picks its multi-step LIF kernel itself (native CUDA when built from
    source, else Triton, else PyTorch; ``SJ_LIF_CUDA_IMPLEMENTATION`` overrides) and the name
    says which it chose; 0.0.0.0.x takes ``backend="cupy"``.
    """
    if prefer_spikingjelly:
        try:
            from spikingjelly.activation_based import neuron, surrogate
        except ImportError:
            return (lambda: PlainLIF(T)), "plain-torch-lif"
        version = importlib.metadata.version("spikingjelly")
        kwargs, backend = {}, "torch"
        if "backend" in inspect.signature(neuron.LIFNode.__init__).parameters:  # 0.0.0.0.x
            backend = "cupy" if torch.cuda.is_available() else "torch"
            kwargs["backend"] = backend
        elif torch.cuda.is_available():
            from spikingjelly.activation_based.functional import neuron_implementation

            backend = neuron_implementation("lif", torch.device("cuda"))["implementation"]

        class SJ(nn.Module):  # folds [T*B] <-> [T, B] around SpikingJelly's multi-step node
            def __init__(self):
                super().__init__()
                self.node = neuron.LIFNode(
                    tau=2.0,
                    surrogate_function=surrogate.ATan(),
                    step_mode="m",
                    detach_reset=False,
                    **kwargs,
                )

            def forward(self, x):
                self.node.reset()
                y = self.node(x.view(T, -1, *x.shape[1:]))
                return y.flatten(0, 1)

        return SJ, f"spikingjelly{version}-{backend}"
    return (lambda: PlainLIF(T)), "plain-torch-lif"


def freeze(module: nn.Module, frozen: bool = True) -> None:
    for p in module.parameters():
        p.requires_grad_(not frozen)


class BNStats:
    """L_BN's per-layer terms, from forward hooks on a teacher's ``BatchNorm2d`` inputs.

    The hooks exist only between ``attach`` and ``detach`` (the synthesis phase), so the KD
    step's teacher forward runs none and nothing accumulates there."""

    def __init__(self, model: nn.Module):
        self.bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        self.terms: list[torch.Tensor] = []
        self._handles = []

    def _hook(self, module, inputs, _):
        # var_mean reduces any layout in one pass (a permute + flatten would copy a
        # channels-last input); bf16 inputs accumulate in float32 inside the reduction.
        var, mean = torch.var_mean(inputs[0], dim=(0, 2, 3), correction=0)
        self.terms.append(
            torch.norm(mean - module.running_mean, 2) + torch.norm(var - module.running_var, 2)
        )

    def attach(self) -> None:
        if not self._handles:
            self._handles = [bn.register_forward_hook(self._hook) for bn in self.bns]

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.terms.clear()


def synthesis_phase(teacher, student, bn: BNStats) -> None:
    """Both networks frozen and in inference mode, the BN hooks on: only the pixels train."""
    teacher.eval()
    student.eval()
    freeze(teacher)
    freeze(student)
    bn.attach()


def kd_phase(teacher, student, bn: BNStats) -> None:
    """The student trains (BN in training mode); the teacher stays frozen, without hooks."""
    bn.detach()
    teacher.eval()
    freeze(teacher)
    student.train()
    freeze(student, False)


def make_synth_step(teacher, student, bn: BNStats, bounds=None, a_adv=0.5):
    """DeepInversion-style pixel step with the adversarial student term (CMI weights), after
    ``synthesis_phase``; ``bounds``: per-channel ``(lo, hi)`` the pixels are clipped to after
    the update (the valid range, as stars_jax's DeepInversion)."""

    def step(x, opt, y):
        bn.terms.clear()
        opt.zero_grad(set_to_none=True)
        t_logits = teacher(x)
        s_logits = student(x)
        l_bn = sum(bn.terms)
        l_ce = F.cross_entropy(t_logits, y)
        agree = (t_logits.argmax(1) == s_logits.argmax(1)).float().detach()
        kl = F.kl_div(F.log_softmax(s_logits, 1), F.softmax(t_logits, 1), reduction="none")
        l_adv = -(agree * kl.sum(1)).mean()
        loss = l_bn + l_ce + a_adv * l_adv
        loss.backward()
        opt.step()
        if bounds is not None:
            with torch.no_grad():
                x.clamp_(*bounds)
        return loss

    return step


def make_kd_step(teacher, student, opt, temperature=4.0):
    """One student update on the KD loss, after ``kd_phase``."""

    def step(x):
        with torch.no_grad():
            t_logits = teacher(x)
        opt.zero_grad(set_to_none=True)
        s_logits = student(x)
        loss = temperature**2 * F.kl_div(
            F.log_softmax(s_logits / temperature, 1),
            F.softmax(t_logits / temperature, 1),
            reduction="batchmean",
        )
        loss.backward()
        opt.step()
        return loss

    return step


class Round:
    """One DFKD round as ``stars_jax.distill.run_round`` with DeepInversion: fresh pixels and
    Adam state, ``synth_steps`` pixel steps keeping the lowest-loss batch (on device, no host
    sync), that batch as uint8 into a device ring buffer with the teacher's classes on it,
    then ``kd_steps`` KD steps on batches drawn from the filled part of the buffer."""

    def __init__(self, nets, steps, image_shape, batch, norm, capacity, fmt, num_classes=10):
        self.teacher, self.student, self.bn = nets
        self.synth, self.kd = steps  # (x, opt, y) -> loss; (x) -> loss
        self.mean, self.std = norm  # [1, C, 1, 1] device tensors
        dev = self.mean.device
        c, h, w = image_shape
        self.x = torch.zeros(batch, c, h, w, device=dev).contiguous(memory_format=fmt)
        self.x.requires_grad_()
        self.y = torch.zeros(batch, dtype=torch.long, device=dev)
        self.opt = torch.optim.Adam([self.x], lr=0.1, betas=(0.5, 0.99))
        self.images = torch.zeros(capacity, c, h, w, dtype=torch.uint8, device=dev)
        self.preds = torch.zeros(capacity, dtype=torch.long, device=dev)
        self.count = self.cursor = 0  # host integers: known without a sync
        self.batch, self.fmt, self.num_classes = batch, fmt, num_classes

    def view(self, images_u8):
        x = (images_u8.float() / 255 - self.mean) / self.std
        return x.contiguous(memory_format=self.fmt)

    def synthesize(self, synth_steps: int):
        synthesis_phase(self.teacher, self.student, self.bn)
        with torch.no_grad():
            self.x.normal_()
            self.y.random_(0, self.num_classes)
        self.opt.state.clear()  # a fresh Adam state every round
        best_loss, best = torch.tensor(math.inf, device=self.x.device), torch.zeros_like(self.x)
        for _ in range(synth_steps):
            before = self.x.detach().clone()
            loss = self.synth(self.x, self.opt, self.y).detach()
            better = loss < best_loss  # the loss is that of the batch before the update
            best_loss = torch.where(better, loss, best_loss)
            best = torch.where(better, before, best)
        return (best * self.std + self.mean).mul(255).round().clamp(0, 255).to(torch.uint8)

    def add(self, kept):
        with torch.no_grad():  # the kept batch's health, as add_synthetic
            preds = self.teacher(self.view(kept)).argmax(1)
        idx = (self.cursor + torch.arange(len(kept), device=kept.device)) % len(self.images)
        self.images[idx], self.preds[idx] = kept, preds
        self.count = min(self.count + len(kept), len(self.images))
        self.cursor = (self.cursor + len(kept)) % len(self.images)

    def __call__(self, synth_steps: int, kd_steps: int):
        kept = self.synthesize(synth_steps)
        kd_phase(self.teacher, self.student, self.bn)
        self.add(kept)
        for _ in range(kd_steps):
            idx = torch.randint(0, self.count, (self.batch,), device=kept.device)
            self.kd(self.view(self.images[idx]))


def parse_mode(mode: str) -> tuple[bool, bool, bool]:
    """``(bf16 autocast, torch.compile, channels-last)`` of a mode name."""
    base, plus, suffix = mode.partition("+")
    if base not in MODES or (plus and suffix != "cl"):
        raise ValueError(f"Unknown torch mode {mode!r}; valid: {sorted(MODES)}, each with '+cl'.")
    return (*MODES[base], bool(plus))


def _configure(dev: str) -> None:
    if dev == "cuda":
        torch.backends.cudnn.benchmark = True
        # fp32 convolutions already use TF32 (cudnn.allow_tf32 defaults on), as XLA's default
        # precision does on this GPU; let the few matmuls do the same.
        torch.set_float32_matmul_precision("high")
    else:  # the CPU run is a smoke check: tiny ops, where two threads' hand-offs dominate
        torch.set_num_threads(1)


def _median_ms(fn, steps: int, warmup: int, sync) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _norm(mean, std, dev):
    """``(mean, std)`` as ``[1, C, 1, 1]`` tensors and the normalised pixel range ``(lo, hi)``."""
    mean = torch.tensor(mean, device=dev).view(1, -1, 1, 1)
    std = torch.tensor(std, device=dev).view(1, -1, 1, 1)
    return (mean, std), ((0 - mean) / std, (1 - mean) / std)


def _cases(spec, nets, dev, fmt, compile_fn):
    """``[(name, fn, set_phase, steps, warmup, images)]`` the spec asks for."""
    s, (teacher, student, bn) = spec["setting"], nets
    shape = (s.get("channels", 3), s["size"], s["size"])
    norm, bounds = _norm(*spec["norm"], dev)
    x = torch.randn(s["batch"], *shape, device=dev).contiguous(memory_format=fmt)
    x.requires_grad_()
    y = torch.randint(0, 10, (s["batch"],), device=dev)
    x_opt = torch.optim.Adam([x], lr=0.1, betas=(0.5, 0.99))
    kd_opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    synth = compile_fn(make_synth_step(teacher, student, bn, bounds))
    kd = compile_fn(make_kd_step(teacher, student, kd_opt))
    cases = []
    if "steps" in spec["tables"]:
        n, w, b = spec["steps"], spec["warmup"], s["batch"]
        cases += [
            ("synthesis", lambda: synth(x, x_opt, y), lambda: synthesis_phase(*nets), n, w, b),
            ("kd", lambda: kd(x.detach()), lambda: kd_phase(*nets), n, w, b),
        ]
    if "round" in spec["tables"]:
        r = spec["round"]
        rnd = Round(nets, (synth, kd), shape, s["batch"], norm, r["bank_size"], fmt)
        fn = lambda: rnd(r["synth_steps"], r["kd_steps"])
        images = s["batch"] * (1 + r["kd_steps"])  # kept + KD images, as train.py counts
        cases.append(("round", fn, lambda: None, r["rounds"], 0, images))
    return cases


def run_mode(spec: dict) -> list[dict]:
    """Times what ``spec`` asks for in one mode: ``{"mode", "setting", "tables", "steps",
    "warmup", "norm": (mean, std), "round": {synth_steps, kd_steps, rounds, bank_size}}``."""
    mode, s = spec["mode"], spec["setting"]
    bf16, compiled, channels_last = parse_mode(mode)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    _configure(dev)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    factory, backend = make_neuron(s["T"])
    in_ch, t_widths = s.get("channels", 3), s.get("t_widths", s["widths"])
    teacher = ResNet(s["t_stages"], t_widths, in_ch=in_ch).to(dev, memory_format=fmt)
    student = ResNet(s["s_stages"], s["widths"], in_ch=in_ch, spiking_neuron=factory, T=s["T"])
    student = student.to(dev, memory_format=fmt)
    nets = (teacher, student, BNStats(teacher))
    compile_fn = torch.compile if compiled else (lambda f: f)
    autocast = torch.autocast(dev, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    rows = []
    for name, fn, set_phase, steps, warmup, images in _cases(spec, nets, dev, fmt, compile_fn):
        set_phase()
        if dev == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with autocast:
            t0 = time.perf_counter()
            fn()
            sync()
            first_s = time.perf_counter() - t0  # compiles when compiled
            ms = _median_ms(fn, steps, warmup, sync)
        compile_s = first_s - ms / 1e3 if compiled else 0.0  # the first call's excess
        row = dict(
            impl=f"torch+{backend}",
            mode=mode,
            step=name,
            ms=ms,
            compile_s=compile_s,
            step_bytes=torch.cuda.max_memory_allocated() if dev == "cuda" else None,
            images=images,
        )
        rows.append(row)
        print("ROW " + json.dumps(row), flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description="One PyTorch mode of bench_steps.py (a child).")
    p.add_argument("--spec", required=True, help="JSON: see run_mode")
    run_mode(json.loads(p.parse_args(argv).spec))


if __name__ == "__main__":
    main()
