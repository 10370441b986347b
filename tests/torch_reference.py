"""PyTorch reference definitions of the public DFKD CIFAR teachers (test oracle only).

Written independently of ``stars_jax.models.teachers`` from the architecture facts in
``../shared/teachers/README.md`` and the public ``resnet_cifar.py`` / ``wresnet.py`` / ``vgg.py``
code of the data-free KD repositories, so that their state-dict keys and eval-mode outputs are
those of the released checkpoints. Inputs are NCHW.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """CIFAR ResNet block: relu(bn2(conv2(relu(bn1(conv1 x)))) + shortcut(x))."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet: 3x3 stem without max-pool, four stages, global average pool, ``linear``."""

    def __init__(self, num_blocks, num_classes: int = 10):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(64, num_blocks[0], 1)
        self.layer2 = self._make_layer(128, num_blocks[1], 2)
        self.layer3 = self._make_layer(256, num_blocks[2], 2)
        self.layer4 = self._make_layer(512, num_blocks[3], 2)
        self.linear = nn.Linear(512, num_classes)

    def _make_layer(self, planes, n, stride):
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, (1, 1)).flatten(1)
        return self.linear(out)


class WideBlock(nn.Module):
    """Public ``wresnet.py`` BasicBlock (pre-activation; shortcut applied to relu(bn1(x)))."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout_rate)
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = (
            None
            if self.equal_in_out
            else nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x):
        # Exactly the public logic: when shapes differ, x itself is replaced by relu(bn1(x)).
        if not self.equal_in_out:
            x = self.relu1(self.bn1(x))
            out = x
        else:
            out = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(out)))
        out = self.conv2(self.dropout(out))
        return (x if self.equal_in_out else self.convShortcut(x)) + out


class NetworkBlock(nn.Module):
    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(
            *[
                WideBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
                for i in range(n)
            ]
        )

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-widen; dropout 0."""

    def __init__(self, depth: int, num_classes: int, widen_factor: int = 1):
        super().__init__()
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(3, channels[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], 1)
        self.block2 = NetworkBlock(n, channels[1], channels[2], 2)
        self.block3 = NetworkBlock(n, channels[2], channels[3], 2)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(channels[3], num_classes)

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


VGG11_CFG = [[64], [128], [256, 256], [512, 512], [512, 512]]


class VGG(nn.Module):
    """Public batch-normed VGG for CIFAR: ``block0..block4`` Sequentials and ``classifier``."""

    def __init__(self, cfg=VGG11_CFG, num_classes: int = 10):
        super().__init__()
        in_ch = 3
        for g, widths in enumerate(cfg):
            setattr(self, f"block{g}", self._make_layers(widths, in_ch))
            in_ch = widths[-1]
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.classifier = nn.Linear(512, num_classes)

    @staticmethod
    def _make_layers(widths, in_ch):
        layers = []
        for v in widths:
            layers += [nn.Conv2d(in_ch, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            in_ch = v
        return nn.Sequential(*layers[:-1])  # The group's last ReLU is applied in forward.

    def forward(self, x):
        h = x.shape[2]
        x = self.pool(F.relu(self.block0(x)))
        x = self.pool(F.relu(self.block1(x)))
        x = self.pool(F.relu(self.block2(x)))
        x = F.relu(self.block3(x))
        if h == 64:
            x = self.pool(x)
        x = F.relu(self.block4(x))
        x = F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)
        return self.classifier(x)


def make_torch_teacher(arch: str, num_classes: int = 10) -> nn.Module:
    """The PyTorch teacher named like the ``stars_jax`` registry entry ``arch``."""
    factories = {
        "resnet18": lambda: ResNet((2, 2, 2, 2), num_classes),
        "resnet34": lambda: ResNet((3, 4, 6, 3), num_classes),
        "wrn16_2": lambda: WideResNet(16, num_classes, 2),
        "wrn40_2": lambda: WideResNet(40, num_classes, 2),
        "vgg11": lambda: VGG(VGG11_CFG, num_classes),
    }
    if arch not in factories:
        raise KeyError(f"No torch reference for {arch!r}; valid: {sorted(factories)}.")
    return factories[arch]()


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0, image_size: int = 32) -> nn.Module:
    """Gives every parameter and BN running statistic non-trivial random values, in place.

    Default initialisation leaves BN at mean 0, var 1, weight 1, bias 0, under which a converter
    that swaps mean/var or scale/bias would still pass. Here the running statistics are first
    calibrated on one random batch (so activations stay O(1) through deep nets and the logits
    depend on the input rather than on a huge constant offset), then perturbed per channel.
    Returns the model in eval mode.
    """
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            fan_in = m.weight[0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            if m.bias is not None:
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    for m in bns:
        m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g))
        m.bias.copy_(0.2 * torch.randn(m.num_features, generator=g))
        m.reset_running_stats()
        m.momentum = None  # Cumulative average: after one batch, running stats = batch stats.
    model.train()(torch.randn(16, 3, image_size, image_size, generator=g))
    for m in bns:
        c, std = m.num_features, m.running_var.sqrt()
        m.running_mean.add_(0.2 * std * torch.randn(c, generator=g))
        m.running_var.mul_(0.5 + torch.rand(c, generator=g))
        m.momentum = 0.1
    return model.eval()


class FastGenerator(nn.Module):
    """The generator of the public Fast DFKD code (``datafree/models/generator.py``), NCHW."""

    def __init__(self, nz: int, ngf: int, img_size: int, nc: int):
        super().__init__()
        self.init_size = img_size // 4
        self.l1 = nn.Sequential(nn.Linear(nz, ngf * 2 * self.init_size**2))
        self.conv_blocks = nn.Sequential(
            nn.BatchNorm2d(ngf * 2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(ngf * 2, ngf * 2, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(ngf * 2),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(ngf * 2, ngf, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(ngf),
            nn.LeakyReLU(0.2),
            nn.Conv2d(ngf, nc, 3, stride=1, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, z):
        out = self.l1(z).view(z.shape[0], -1, self.init_size, self.init_size)
        return self.conv_blocks(out)


def bn_input_hooks(model: nn.Module) -> list:
    """Forward hooks that keep the input of every BatchNorm2d (in forward order) in a list."""
    store = []

    def hook(module, inputs, output):
        store.append((module, inputs[0]))

    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.register_forward_hook(hook)
    return store


def deepinversion_bn_loss(store, ema=None, momentum=0.0):
    """Fast DFKD's ``DeepInversionHook.r_feature`` summed over layers: plain L2 norms of the
    (EMA-blended) biased batch variance and mean against the running statistics. Returns the
    loss and the per-layer current (mean, var), detached."""
    total, moments = 0.0, []
    for i, (m, x) in enumerate(store):
        mean = x.mean([0, 2, 3])
        var = x.permute(1, 0, 2, 3).reshape(x.shape[1], -1).var(1, unbiased=False)
        moments.append((mean.detach(), var.detach()))
        if ema is not None:
            mean = (1 - momentum) * mean + momentum * ema[i][0]
            var = (1 - momentum) * var + momentum * ema[i][1]
        total = total + torch.norm(m.running_var - var, 2) + torch.norm(m.running_mean - mean, 2)
    return total, moments
