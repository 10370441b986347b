"""The PyTorch (+ SpikingJelly) way of the two hot steps, written for the side-by-side timing.

Same architectures (CIFAR ResNet teacher, spiking ResNet student with multi-step LIF), same
losses (L_BN from BN-input hooks, CE, adversarial KL; KD with temperature) and same batch and
T as stars_jax's steps. SpikingJelly's multi-step ``LIFNode`` (cupy kernel on CUDA) is used
when installed; otherwise a plain PyTorch LIF with the same ATan surrogate (and a note says so).
"""

from __future__ import annotations

import importlib.metadata
import inspect
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


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
        if self.spiking:  # direct encoding: the stem once, repeated over T
            y = y.unsqueeze(0).expand(self.T, *y.shape).reshape(-1, *y.shape[1:])
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
        return torch.stack(out).flatten(0, 1)


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


def bn_hooks(model):
    """Registers forward hooks collecting (input mean, input var, running mean, running var)."""
    stats = []

    def hook(module, inputs, _):
        x = inputs[0]
        m = x.mean(dim=(0, 2, 3))
        v = x.permute(1, 0, 2, 3).flatten(1).var(1, unbiased=False)
        stats.append((m, v, module.running_mean, module.running_var))

    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.register_forward_hook(hook)
    return stats


def make_synth_step(teacher, student, stats, lr=0.1):
    """DeepInversion-style pixel step with the adversarial student term (CMI weights)."""

    def step(x, opt, y):
        stats.clear()
        opt.zero_grad(set_to_none=True)
        t_logits = teacher(x)
        s_logits = student(x)
        l_bn = sum(torch.norm(m - rm, 2) + torch.norm(v - rv, 2) for m, v, rm, rv in stats)
        l_ce = F.cross_entropy(t_logits, y)
        agree = (t_logits.argmax(1) == s_logits.argmax(1)).float().detach()
        kl = F.kl_div(F.log_softmax(s_logits, 1), F.softmax(t_logits, 1), reduction="none")
        l_adv = -(agree * kl.sum(1)).mean()
        loss = l_bn + l_ce + 0.5 * l_adv
        loss.backward()
        opt.step()
        return loss

    return step


def make_kd_step(teacher, student, opt, temperature=4.0):
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
