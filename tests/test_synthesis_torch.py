"""Fast's inner steps and first-order MAML meta step against a PyTorch re-implementation.

The PyTorch side is written for this test from the public Fast DFKD code
(``datafree/synthesis/fast_meta.py``: a clone of the generator and the latents take Adam steps
on BN + CE; every inner gradient is added to the persistent generator's, which takes one Adam
step at ``lr * steps``). Both sides start from the same weights, latents and labels, with the
augmentation off, in float64 so that Adam's first, sign-like steps cannot differ by rounding.
"""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from configs.default import get_config
from stars_jax import convert
from stars_jax.config import synth_view
from stars_jax.models.teachers import make_teacher
from stars_jax.synthesis import StepInputs, make_synthesizer
from tests.torch_reference import (
    FastGenerator,
    bn_input_hooks,
    deepinversion_bn_loss,
    make_torch_teacher,
    randomize_,
)

SIZE, BATCH, NZ, NGF, STEPS = 16, 8, 12, 4, 3
MEAN, STD = (0.5, 0.45, 0.4), (0.25, 0.2, 0.3)


def _flax_to_torch_generator(params, gen: torch.nn.Module):
    """Copies the Flax generator's weights into the PyTorch one (layouts and, for ``l1``'s
    outputs, the (C, H, W) order of PyTorch's ``view`` against Flax's (H, W, C) reshape)."""
    p = jax.tree.map(np.array, params)
    s = SIZE // 4
    c2 = 2 * NGF
    kernel = p["l1"]["kernel"].reshape(NZ, s, s, c2).transpose(0, 3, 1, 2).reshape(NZ, -1)
    bias = p["l1"]["bias"].reshape(s, s, c2).transpose(2, 0, 1).reshape(-1)
    conv = lambda k: torch.from_numpy(k.transpose(3, 2, 0, 1).copy())
    blocks = gen.conv_blocks
    with torch.no_grad():
        gen.l1[0].weight.copy_(torch.from_numpy(kernel.T.copy()))
        gen.l1[0].bias.copy_(torch.from_numpy(bias))
        for idx, name in ((0, "bn0"), (3, "bn1"), (7, "bn2")):
            blocks[idx].weight.copy_(torch.from_numpy(p[name]["scale"]))
            blocks[idx].bias.copy_(torch.from_numpy(p[name]["bias"]))
        blocks[2].weight.copy_(conv(p["conv1"]["kernel"]))
        blocks[6].weight.copy_(conv(p["conv2"]["kernel"]))
        blocks[9].weight.copy_(conv(p["conv3"]["kernel"]))
        blocks[9].bias.copy_(torch.from_numpy(p["conv3"]["bias"]))


def _torch_fast_round(gen, teacher, z, labels, cfg):
    """One round of the reference ``FastMetaSynthesizer.synthesize`` without augmentation."""
    mean = torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)
    store = bn_input_hooks(teacher)
    meta_opt = torch.optim.Adam(gen.parameters(), cfg.lr * cfg.steps, betas=(0.5, 0.999))
    fast = copy.deepcopy(gen)
    z = z.clone().requires_grad_()
    opt = torch.optim.Adam(
        [{"params": fast.parameters()}, {"params": [z], "lr": cfg.lr_z}],
        lr=cfg.lr,
        betas=(0.5, 0.999),
    )
    losses = []
    meta_opt.zero_grad()
    for p in gen.parameters():
        p.grad = torch.zeros_like(p)
    for _ in range(cfg.steps):
        store.clear()
        x01 = fast(z)
        t_out = teacher((x01 - mean) / std)
        loss_bn, moments = deepinversion_bn_loss(store)
        loss = cfg.a_bn * loss_bn + cfg.a_oh * F.cross_entropy(t_out, labels)
        opt.zero_grad()
        loss.backward()
        for p, fp in zip(gen.parameters(), fast.parameters(), strict=True):
            p.grad.add_(fp.grad)  # first-order MAML
        opt.step()
        losses.append(loss.item())
    meta_opt.step()
    return losses, fast, z.detach(), moments


@pytest.mark.parametrize("meta", ["fomaml", "reptile"])
def test_fast_round_matches_pytorch(meta):
    cfg = synth_view(get_config().synth)
    cfg.method, cfg.meta, cfg.steps = "fast", meta, STEPS
    cfg.batch_size, cfg.latent_dim, cfg.generator_width = BATCH, NZ, NGF
    cfg.lr, cfg.lr_z, cfg.a_bn, cfg.a_oh, cfg.bn_ema = 5e-3, 0.015, 10.0, 0.4, 0.9
    cfg.crop_pad, cfg.flip, cfg.reset_l0_round = 0, False, 0

    torch_teacher = randomize_(make_torch_teacher("wrn16_2", 10), seed=3, image_size=SIZE)
    tv = convert.convert_state_dict(
        {k: v.numpy() for k, v in torch_teacher.state_dict().items()},
        "wrn16_2",
        10,
        input_shape=(SIZE, SIZE, 3),
    )
    torch_teacher = torch_teacher.double()
    teacher = make_teacher("wrn16_2", 10)
    syn = make_synthesizer(cfg, teacher, None, (SIZE, SIZE, 3), 10, MEAN, STD)
    with jax.enable_x64(True):
        f64 = lambda t: jax.tree.map(
            lambda a: jnp.asarray(a, jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a,
            t,
        )
        tv = f64(tv)
        state = f64(syn.init(jax.random.key(0), tv))
        state, work = syn.begin(state, jax.random.key(1), 0)
        work = f64(work)
        start = jax.tree.map(np.asarray, state.params)
        z0 = torch.from_numpy(np.array(work.trainable["z"]))
        losses = []
        for i in range(STEPS):
            work, m = syn.step(
                state, work, StepInputs(tv, None, jax.random.key(2 + i), warmup=True)
            )
            losses.append(float(m["synth/loss"]))
        new_state, _, _ = syn.end(state, work)

    gen = FastGenerator(NZ, NGF, SIZE, 3).double()
    _flax_to_torch_generator(start, gen)
    labels = torch.from_numpy(np.array(work.labels)).long()
    t_losses, fast, t_z, moments = _torch_fast_round(gen, torch_teacher, z0, labels, cfg)
    np.testing.assert_allclose(losses, t_losses, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(work.trainable["z"]), t_z.numpy(), atol=1e-4)
    assert not np.allclose(np.asarray(work.trainable["z"]), z0.numpy(), atol=1e-3)  # z moved

    adapted = FastGenerator(NZ, NGF, SIZE, 3).double()
    _flax_to_torch_generator(work.trainable["g"], adapted)
    for (name, a), b in zip(adapted.named_parameters(), fast.parameters(), strict=True):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), atol=1e-4, err_msg=name)
    if meta == "fomaml":
        meta_updated = gen  # _torch_fast_round stepped it
    else:  # Reptile: Adam on (start - adapted), i.e. towards the adapted copy.
        meta_updated = FastGenerator(NZ, NGF, SIZE, 3).double()
        _flax_to_torch_generator(start, meta_updated)
        opt = torch.optim.Adam(meta_updated.parameters(), cfg.lr * cfg.steps, betas=(0.5, 0.999))
        for p, f in zip(meta_updated.parameters(), fast.parameters(), strict=True):
            p.grad = (p - f).detach()
        opt.step()
    ours = FastGenerator(NZ, NGF, SIZE, 3).double()
    _flax_to_torch_generator(new_state.params, ours)
    for (name, a), b in zip(ours.named_parameters(), meta_updated.parameters(), strict=True):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), atol=1e-4, err_msg=name)
        assert not np.allclose(a.detach().numpy(), _param(start, name)), name  # it moved
    # The BN EMA starts from the last inner step's batch moments: ours in float32 after Adam
    # steps, torch's in float64, so they agree to float32 noise grown by those steps (a wrong
    # EMA start is off by the batch-to-batch change of the moments, O(1e-2) and up).
    for i, (m, v) in enumerate(moments):
        np.testing.assert_allclose(new_state.ema.moments.means[i], m.numpy(), atol=1e-5)
        np.testing.assert_allclose(new_state.ema.moments.vars[i], v.numpy(), rtol=1e-5, atol=1e-5)


def _param(flax_params, torch_name):
    gen = FastGenerator(NZ, NGF, SIZE, 3).double()
    _flax_to_torch_generator(flax_params, gen)
    return dict(gen.named_parameters())[torch_name].detach().numpy()
