"""The base config: every key the trainer reads, with CPU-sized values for Fashion-MNIST and
STARS.md's neuron defaults. Config files under ``configs/`` start from ``base_config()`` and
override a few keys (``configs/default.py`` is the embedded default).

Sections mirror the modules: data, teacher, student, neuron, synth, distill, mesh, ckpt, log.
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    """Every key the trainer reads, with its default value and unit."""
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.name = "fashion_mnist"
    c.data.kind = "idx"  # stars_jax.data.LOADERS key, or "auto" to detect from the path.
    c.data.path = "/usr/share/datasets/fashion-mnist"
    c.data.train_split = "train"  # Only read to train the teacher and in real_data mode.
    c.data.test_split = "test"
    c.data.num_classes = 10
    c.data.eval_limit = 0  # Evaluate on the first N test images; 0 = all.
    c.data.eval_batch_size = 512  # A multiple of the device count.
    # Image folders and Tiny-ImageNet: keep the decoded arrays here (.npz, keyed on every
    # file's path, size and mtime) so reruns skip decoding; "" = decode every time.
    c.data.cache_dir = ""

    c.teacher = ml_collections.ConfigDict()
    c.teacher.arch = "resnet_small"
    c.teacher.dir = ""  # A model dir from stars_jax.convert; "" = train one (and cache it).
    c.teacher.cache_dir = "~/.cache/stars_jax/teachers"
    c.teacher.dtype = "float32"  # Compute dtype of the frozen teacher ("bfloat16" on GPU/TPU).
    c.teacher.train_epochs = 3
    c.teacher.train_batch_size = 128
    c.teacher.train_lr = 0.05  # SGD + nesterov momentum 0.9, cosine to 0.
    c.teacher.train_weight_decay = 5e-4

    c.student = ml_collections.ConfigDict()
    c.student.arch = "resnet_small"
    c.student.time_steps = 4  # T
    c.student.dtype = "float32"  # Compute dtype; parameters and BN statistics stay float32.

    c.neuron = ml_collections.ConfigDict()
    c.neuron.tau = 2.0
    c.neuron.v_threshold = 1.0
    c.neuron.reset = "hard"  # "hard" (to v_reset) or "soft" (subtract V_th).
    c.neuron.v_reset = 0.0
    c.neuron.detach_reset = False
    c.neuron.surrogate = "atan"
    c.neuron.alpha = 2.0
    # LIF implementation: "scan" (lax.scan) or "pallas" (one fused kernel for the T-step update
    # and its BPTT, stars_jax.lif_pallas; tested equal on CPU in interpret mode, GPU speed
    # unmeasured).
    c.neuron.kernel = "scan"

    c.synth = ml_collections.ConfigDict()
    # The synthesizer (stars_jax.synthesis.SYNTHESIZERS); set_method() applies its reference
    # settings, which differ a lot between methods (configs take it as their argument).
    c.synth.method = "fast"
    c.synth.batch_size = 64  # Images synthesised (and kept) per round.
    c.synth.steps = 5  # Optimisation steps per round (the references' g_steps).
    c.synth.warmup_rounds = 0  # Synthesis-only first rounds: BN + CE, no KD (Fast's warmup).
    c.synth.lr = 5e-3  # Generator (or pixel, DeepInversion) Adam learning rate.
    c.synth.lr_z = 0.015  # Latent learning rate (Fast).
    c.synth.latent_dim = 256  # Generator input: latent (Fast, CMI) or noisy-layer output (NAYER).
    c.synth.generator_width = 64  # ngf.
    c.synth.meta = "fomaml"  # Fast's meta update: "fomaml" (first-order MAML) or "reptile".
    c.synth.reset_l0_round = 0  # Fast: re-draw the generator's first layer before this round.
    c.synth.bn_ema = 0.9  # Blend BN batch moments with their EMA over rounds (bn_mmt); 0 = off.
    c.synth.crop_pad = 4  # Generators: per-sample random crop (zero padding, pixels) ...
    c.synth.flip = True  # ... and horizontal flip before the teacher.
    c.synth.jitter = 2  # DeepInversion: random roll of the batch in pixels (and flip).
    c.synth.embed = "fixed"  # NAYER label embeddings: "fixed" (random) or "learned".
    c.synth.embed_dim = 512  # NAYER label-embedding size (CLIP ViT-B/32 text width).
    c.synth.reinit_every = 0  # NAYER: re-initialise the generator every N rounds (g_life).
    c.synth.a_cr = 0.0  # CMI: weight of the contrastive term ...
    c.synth.cr_temperature = 0.2  # ... its temperature,
    c.synth.cmi_layers = "all"  # ... the BN layers whose inputs are its features,
    c.synth.cmi_bank_size = 4096  # ... the feature bank (rows),
    c.synth.cmi_negatives = 1024  # ... the negatives drawn from it per step,
    c.synth.cmi_head_dim = 256  # ... and the projection size.
    c.synth.a_bn = 10.0
    c.synth.a_oh = 1.0
    c.synth.a_adv = 1.1
    c.synth.a_tv = 0.0  # Pixel priors (DeepInversion).
    c.synth.a_l2 = 0.0
    # STARS (l_rca = l_tar = 0 and distill.b_rca = 0 give the baseline).
    c.synth.l_rca = 1.0
    c.synth.rca_sign = -1.0  # -1: adversarial (seek unlearned relations); +1: consistency.
    c.synth.rca_rep = "logits"  # "logits" or "features" (penultimate).
    c.synth.l_tar = 1.0
    c.synth.tar_layers = "all"  # "all" or "stage_last".
    c.synth.tar_k = (1.0,)  # Several thresholds at once are summed.
    c.synth.tar_temperature = 0.25  # In units of the channel std; see losses.TAR_TEMPERATURE.
    c.synth.tar_two_sided = False
    # "gaussian": thresholds mu + k sigma from the teacher's BN statistics (STARS.md);
    # "percentile": per-channel Phi(k) quantiles of the teacher's BN inputs on a batch drawn
    # from the memory bank each round (objective.tar_reference), targets from that batch.
    c.synth.tar_thresholds = "gaussian"
    # First round (counting the warm-up) in which the STARS terms act, distill.b_rca included;
    # the rounds between the warm-up and it run the baseline. 0: right after the warm-up.
    c.synth.stars_start_round = 0

    c.distill = ml_collections.ConfigDict()
    # "data_free" (synthesis), "real_data" (KD on the real training set: the upper bound) or
    # "transfer_set" (KD on the images of distill.transfer_set, from stars_jax.export_bank).
    c.distill.mode = "data_free"
    c.distill.transfer_set = ""
    c.distill.rounds = 45
    c.distill.kd_steps = 20  # Student updates per round.
    c.distill.batch_size = 64
    c.distill.optimizer = "adam"  # "sgd" (momentum 0.9) or "adam".
    c.distill.nesterov = True  # SGD only.
    c.distill.lr = 5e-3  # Peak; linear warm-up then cosine to lr_min.
    c.distill.lr_min = 0.0
    c.distill.lr_warmup_rounds = 2  # Rounds of linear learning-rate warm-up (after synth's).
    c.distill.weight_decay = 0.0
    c.distill.t_kd = 4.0  # KD temperature.
    c.distill.per_time_step = False  # TET-style KD on every time step.
    c.distill.b_rca = 1.0  # RCA in the student's KD loss (STARS).
    c.distill.rca_rep = "logits"
    c.distill.bank_size = 10240  # Images kept in the device memory bank (ring buffer).
    c.distill.crop_pad = 2  # Random crop padding in pixels (and horizontal flip).
    c.distill.flip = False  # Horizontal flips; off for Fashion-MNIST-like data.
    c.distill.eval_every = 15  # Rounds between evaluations on the real test set.
    # Seconds of wall time for the whole job (0 = none); rounds then becomes an upper bound
    # and the learning-rate schedule is fitted to the rounds that fit (stars_jax.budget).
    c.distill.time_budget_s = 0.0

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # Devices on the data axis; -1 = all.

    c.ckpt = ml_collections.ConfigDict()
    c.ckpt.every = 5  # Rounds between checkpoints (always at the end).
    c.ckpt.keep = 2

    # The synaptic operations and energy of the student (and the teacher's MACs) on the whole
    # test set, into summary.json and the console (stars_jax.energy); 45 nm energy figures.
    c.energy = ml_collections.ConfigDict()
    c.energy.enabled = True
    c.energy.pj_per_ac = 0.9
    c.energy.pj_per_mac = 4.6

    c.log = ml_collections.ConfigDict()
    c.log.every = 1  # Rounds between console lines.
    c.log.grid_images = 64  # Synthetic images in the PNG grid written at each evaluation.
    # TensorBoard event files in the workdir (tensorboardX, the [tensorboard] extra).
    c.log.tensorboard = True
    return c


# Each synthesizer's settings in its public reference code (CIFAR scripts), which set_method
# applies; config files then change what measurements chose (benchmarks/RESULTS.md). Kept out
# of the formatter (fmt: skip below): a table, one synthesizer a row as the scripts list them.
REFERENCE_SYNTH = {
    # Fast-Datafree scripts/fast_cifar.sh, "Fast-2": g_steps 2, lr_g 5e-3, lr_z 0.015,
    # bn_mmt 0.9, warmup 20, is_maml 1, reset_l0 at epoch warmup + 120; weights per teacher
    # in FAST_TEACHER_WEIGHTS.
    "fast": dict(steps=2, lr=5e-3, lr_z=0.015, latent_dim=256, warmup_rounds=20, bn_ema=0.9,
                 meta="fomaml", reset_l0_round=140, a_bn=10.0, a_oh=0.4, a_adv=1.1),
    # NAYER scripts/nayer_*.sh: g_steps 40, lr_g 4e-3, le_emb_size 1000, g_life 10, bn_mmt 0.9,
    # warmup 20, bn 10, oh 0.5, adv 1.33 for every teacher.
    "nayer": dict(steps=40, lr=4e-3, latent_dim=1000, warmup_rounds=20, bn_ema=0.9,
                  reinit_every=10, a_bn=10.0, a_oh=0.5, a_adv=1.33),
    # Fast-Datafree scripts/cmi_cifar.sh: g_steps 200, lr_g 1e-3, bn 1, oh 1, adv 0.5, cr 0.8,
    # cr_T 0.2, no warm-up, no BN momentum; bank 40960, 4096 negatives, head 256.
    "cmi": dict(steps=200, lr=1e-3, latent_dim=256, warmup_rounds=0, bn_ema=0.0, a_bn=1.0,
                a_oh=1.0, a_adv=0.5, a_cr=0.8, cr_temperature=0.2, cmi_bank_size=40960,
                cmi_negatives=4096, cmi_head_dim=256),
    # Fast-Datafree scripts/deepinv_cifar.sh: g_steps 1000, lr_g 0.1, bn 10, oh 1, adv 1;
    # jitter 1/8 of the image side.
    "deepinversion": dict(steps=1000, lr=0.1, warmup_rounds=0, bn_ema=0.0, a_bn=10.0, a_oh=1.0,
                          a_adv=1.0, jitter=4),
}  # fmt: skip

# Where measurements moved a synthesizer away from its reference (benchmarks/RESULTS.md,
# "Synthesis health"): set_method applies these on top of REFERENCE_SYNTH.
MEASURED_SYNTH = {
    # a_oh 2 instead of 0.5: on the wrn40_2 teacher (CPU, batch 64) the kept batches' teacher
    # top-1 went from 0.44 to 0.95 with diversity unchanged (0.67 -> 0.70, a real batch: 0.69);
    # on the embedded default's student it made no measurable difference (+2.24 and -1.69
    # points on seeds 0 and 1 at an equal 600 s budget).
    # reinit_every 20: NAYER's g_life (10 epochs) times its g_loops (2 batches per epoch).
    "nayer": dict(a_oh=2.0, reinit_every=20),
}

# Fast's loss weights (a_bn, a_oh, a_adv) per teacher in scripts/fast_cifar.sh.
FAST_TEACHER_WEIGHTS = {
    "resnet34": (10.0, 0.5, 1.33),
    "wrn40_2": (10.0, 0.4, 1.1),
    "vgg11": (10.0, 0.5, 1.0),
}


def set_method(
    c: ml_collections.ConfigDict, method: str, teacher: str | None = None, reference=False
):
    """Sets ``c.synth.method`` and the reference settings of that synthesizer (for Fast, its
    weights for ``teacher`` where the reference has a row for it), then, unless
    ``reference``, the changes measurements chose (``MEASURED_SYNTH``)."""
    if method not in REFERENCE_SYNTH:
        raise ValueError(f"Unknown synthesizer {method!r}; valid: {sorted(REFERENCE_SYNTH)}.")
    c.synth.method = method
    settings = dict(REFERENCE_SYNTH[method])
    if method == "fast" and teacher in FAST_TEACHER_WEIGHTS:
        settings["a_bn"], settings["a_oh"], settings["a_adv"] = FAST_TEACHER_WEIGHTS[teacher]
    if not reference:
        settings.update(MEASURED_SYNTH.get(method, {}))
    for key, value in settings.items():
        c.synth[key] = value
    return c


def parse_arg(arg: str | None, default_method: str) -> tuple[str, str | None]:
    """A config file's argument ``METHOD[,TEACHER]`` (both optional) -> (method, teacher)."""
    parts = [p.strip() for p in (arg or "").split(",")]
    method = parts[0] or default_method
    teacher = parts[1] if len(parts) > 1 and parts[1] else None
    return method, teacher


def load_config_file(path, arg=None) -> ml_collections.ConfigDict:
    """``get_config(arg)`` of a config file given by path (configs build on one another)."""
    import importlib.util
    from pathlib import Path

    path = Path(path)
    spec = importlib.util.spec_from_file_location(f"stars_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)
