"""Bring-your-own teacher: torchvision classifiers and any traceable CNN through torch.fx
(``stars_jax.torch_graph``, ``stars_jax.torch_teacher``), checked against torch's logits."""

import json
import sys
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from stars_jax import convert  # noqa: E402
from stars_jax.model_dir import load_model_dir  # noqa: E402
from stars_jax.objective import teacher_bn  # noqa: E402
from stars_jax.torch_graph import UntranslatableError  # noqa: E402


def _torchvision_models():
    # The index's torchvision is built against a CUDA torch, and its compiled detection ops
    # fail to register beside this CPU torch; the pure-Python classifiers need none of them.
    # A stub for the module that registers them lets torchvision import (users' environments
    # have a matching pair and need no stub).
    sys.modules.setdefault(
        "torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations")
    )
    try:
        import torchvision.models as models
    except ImportError:
        pytest.skip("torchvision is not installed (pip install stars_jax[torchvision])")
    return models


def randomize_bn(module, seed=0):
    """Non-trivial BN statistics and affine parameters, as a trained network has."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return module


class SE(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, c // 2, 1), nn.Conv2d(c // 2, c, 1)

    def forward(self, x):
        s = nn.functional.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(nn.functional.relu(self.fc1(s))))


class TinyNet(nn.Module):
    """Residual add, concat, SE multiply, SiLU, max and adaptive-avg pooling, a grouped and a
    dilated conv with reflect padding, and a view-flatten before the Linear."""

    def __init__(self, num_classes=4, width=8):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        )
        self.branch = nn.Conv2d(
            width, width, 3, padding=2, dilation=2, groups=2, padding_mode="reflect"
        )
        self.bn = nn.BatchNorm2d(2 * width)
        self.se = SE(2 * width)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Sequential(nn.Dropout(0.5), nn.Linear(2 * width * 4, num_classes))

    def forward(self, x):
        x = nn.functional.silu(self.stem(x))
        y = self.branch(x) + x
        x = self.bn(torch.cat([x, y], dim=1))
        x = self.pool(self.se(nn.functional.silu(x)))
        x = nn.functional.adaptive_avg_pool2d(x, (2, 2))
        return self.head(x.reshape(x.size(0), -1))


class WithLayerNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.norm = nn.Conv2d(3, 4, 3), nn.LayerNorm([4, 14, 14])

    def forward(self, x):
        return self.norm(self.conv(x)).mean((2, 3))


def tiny_net(num_classes=4, width=8):
    """``--torch_module tests.test_convert_torch:tiny_net``: random weights, BN statistics too."""
    torch.manual_seed(0)
    return randomize_bn(TinyNet(num_classes, width))


def _convert(tmp_path, *flags):
    out = tmp_path / "teacher"
    convert.main([*flags, f"--out={out}"])
    return out, json.loads((out / "model.json").read_text())


@pytest.mark.parametrize("name", ["vgg11_bn", "mobilenet_v2"])  # resnet18: through the CLI
def test_torchvision_classifiers_match_torch(name):
    models = _torchvision_models()
    torch.manual_seed(0)
    module = randomize_bn(models.get_model(name, weights=None, num_classes=10))
    loaded = convert.from_torch(module, image_size=32, normalize="imagenet")
    report = loaded.meta["parity"]
    # The stated tolerance: max |flax - torch| <= 1e-4 * max(1, max |torch logit|), float32.
    assert report["passed"] and report["max_abs_diff"] <= 1e-4 * max(1, report["max_abs_logit"])
    assert report["top1_agreement"] == 1.0 and loaded.meta["num_classes"] == 10


def test_torchvision_cli_writes_a_teacher_with_bn_intermediates(tmp_path):
    models = _torchvision_models()
    torch.manual_seed(0)
    trained = randomize_bn(models.resnet18(num_classes=10))  # as if trained: a checkpoint
    torch.save({"state_dict": trained.state_dict()}, tmp_path / "r18.pth")
    out, meta = _convert(
        tmp_path,
        "--arch=torchvision/resnet18",
        "--num_classes=10",
        "--normalize=imagenet",
        f"--checkpoint={tmp_path / 'r18.pth'}",
    )
    assert meta["arch"] == "graph" and meta["source"] == "torchvision/resnet18"
    report = meta["parity"]
    assert report["passed"] and report["max_abs_diff"] <= 1e-4 * max(1, report["max_abs_logit"])
    assert meta["normalization"]["mean"] == [0.485, 0.456, 0.406]
    loaded = load_model_dir(out)  # rebuilt from the graph spec alone
    x = np.zeros((2, 32, 32, 3), np.float32)
    (logits, _), state = loaded.model.apply(loaded.variables, x, mutable=["intermediates"])
    bn = teacher_bn(state["intermediates"], loaded.variables["batch_stats"])
    assert logits.shape == (2, 10) and len(bn.names) == 20  # every BN of ResNet-18
    assert "layer1_0/bn1" in bn.names and "layer2_0/downsample_1" in bn.names


def test_untranslatable_op_is_named_and_nothing_written(tmp_path):
    torch.manual_seed(0)
    with pytest.raises(UntranslatableError, match=r"LayerNorm at graph node 'norm'"):
        convert.from_torch(WithLayerNorm(), image_size=16, out=tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_custom_module_converts_through_torch_module_and_teaches_a_tiny_run(tmp_path):
    from stars_jax import train
    from stars_jax.config import load_config_file
    from tests.test_train import TINY, make_tiny_data

    tdir, meta = _convert(
        tmp_path,
        "--torch_module=tests.test_convert_torch:tiny_net",
        '--torch_kwargs={"num_classes": 4, "width": 8}',
        "--image_size=16",
        "--normalize=cifar10",
    )
    assert meta["parity"]["passed"] and meta["parity"]["top1_agreement"] == 1.0
    assert meta["torch_kwargs"] == {"num_classes": 4, "width": 8}
    ops = {n["op"] for n in meta["graph"]["nodes"]}
    assert {"add", "cat", "mul", "max_pool", "adaptive_avg_pool", "reshape"} <= ops
    # The main job on that teacher, rebuilt from its directory alone.
    c = load_config_file(TINY, str(make_tiny_data(tmp_path / "data")))
    c.teacher.dir, c.teacher.arch = str(tdir), "graph"
    c.distill.rounds, c.ckpt.every = 2, 2
    summary = train.train_and_evaluate(c, tmp_path / "run")
    assert 0.0 <= summary["student"]["top1"] <= 100.0
    assert summary["kd_steps"] == 2  # 2 rounds, 1 of warm-up, 2 KD steps
