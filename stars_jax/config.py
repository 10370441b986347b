"""The base config: every key the trainer reads, with CPU-sized values for Fashion-MNIST and
STARS.md's neuron defaults. Config files under ``configs/`` start from ``base_config()`` and
override a few keys (``configs/default.py`` is the embedded default).

Sections mirror the modules: data, teacher, student, neuron, synth, distill, mesh, ckpt, log.

``synth`` holds the keys every synthesizer shares (method, batch, augmentation, the STARS
terms) and one section per synthesizer (``synth.fast``, ``synth.nayer``, ``synth.cmi``,
``synth.deepinversion``) with that method's settings, its reference defaults. Only the section
of ``synth.method`` is read: the trainer reads ``resolved(config)``, whose ``synth`` is the
shared keys plus that section's, flat (``synth_view``). Workdirs of the flat layout before the
sections resume: ``old_key_path`` maps their stored keys.
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
    # A validation part held out of the training split, N images a class (0 = none), drawn by
    # val_seed: split "val" evaluates on it, for choosing settings; the student never sees it
    # (nor any training image), and the test split stays for reporting (stars_jax.data).
    c.data.val_per_class = 0
    c.data.val_seed = 0

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
    # The synthesizer (stars_jax.synthesis.SYNTHESIZERS). Keys every method shares are here;
    # each method's own settings are in its section below (synth.fast, synth.nayer, ...), and
    # only the section of synth.method is read (synth_view). Choosing a method changes nothing
    # else: --config.synth.method=nayer runs NAYER at its section's settings.
    c.synth.method = "fast"
    c.synth.batch_size = 64  # Images synthesised (and kept) per round.
    c.synth.crop_pad = 4  # Generators: per-sample random crop (zero padding, pixels) ...
    c.synth.flip = True  # ... and horizontal flip before the teacher.
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
    # First round (counting the warm-up) in which the STARS terms act, distill.b_rca and b_tar
    # included; the rounds between the warm-up and it run the baseline. 0: after the warm-up.
    c.synth.stars_start_round = 0
    # First round from which TAR is off again (STARS's other terms go on): TAR early, then off.
    # 0: never; else it must come after stars_start_round.
    c.synth.tar_stop_round = 0
    # What l_rca and l_tar mean: "raw" loss weights, or "ratio": each term's gradient on the
    # images as a fraction of the BN term's, calibrated once before STARS starts
    # (stars_jax.calibration; needs a warm-up round or stars_start_round >= 1).
    c.synth.stars_weights = "raw"
    for method, section in method_sections().items():
        c.synth[method] = section

    c.distill = ml_collections.ConfigDict()
    # "data_free" (synthesis), "real_data" (KD on the real training set: the upper bound) or
    # "transfer_set" (KD on the images of distill.transfer_set, from stars_jax.export_bank) or
    # "noise" (KD on distill.bank_size Gaussian-noise images: the floor).
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
    # TAR on the student's side: each LIF layer's per-channel firing rate matched to the
    # fraction of the teacher's ReLU inputs above 0 at the same module path (stars_jax.
    # student_tar; built-in ResNet teachers and spiking ResNet students). 0: off.
    c.distill.b_tar = 0.0
    c.distill.bank_size = 10240  # Images kept in the device memory bank (ring buffer).
    c.distill.crop_pad = 2  # Random crop padding in pixels (and horizontal flip).
    c.distill.flip = False  # Horizontal flips; off for Fashion-MNIST-like data.
    c.distill.eval_every = 15  # Rounds between evaluations on the real test set.
    # A weight average of the student (params and BN statistics), evaluated beside it; 0 = off.
    c.distill.ema_decay = 0.0
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
    # Rounds between measurements of each synthesis term's gradient on the images against the
    # BN term's (synth/grad_ratio/<term>, one backward pass per term on the kept batch); 0 = off.
    c.log.grad_ratio_every = 5
    # TensorBoard event files in the workdir (tensorboardX, the [tensorboard] extra).
    c.log.tensorboard = True
    return c


METHODS = ("fast", "nayer", "cmi", "deepinversion")  # the sections of config.synth


def _section(**values) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(values)


def method_sections() -> dict[str, ml_collections.ConfigDict]:
    """Each synthesizer's section: its settings in its public reference code (CIFAR scripts),
    where measurements changed one the comment says so (benchmarks/RESULTS.md, "Why the
    configs are set as they are"). Every section has the keys
      steps: optimisation steps per round (the references' g_steps);
      warmup_rounds: synthesis-only first rounds (BN + CE, no KD);
      lr: the generator's (DeepInversion: the pixels') Adam learning rate;
      bn_ema: blend BN batch moments with their EMA over rounds (bn_mmt); 0 = off;
      a_bn, a_oh, a_adv: the weights of the BN, CE and adversarial terms;
    and its own. Kept out of the formatter (fmt: skip): a table, as the scripts list them."""
    return dict(
        # Fast-Datafree scripts/fast_cifar.sh, "Fast-2"; weights per teacher in
        # FAST_TEACHER_WEIGHTS (the config files apply them).
        fast=_section(
            steps=2, warmup_rounds=20, lr=5e-3, bn_ema=0.9, a_bn=10.0, a_oh=0.4, a_adv=1.1,
            lr_z=0.015,  # the latents' learning rate
            latent_dim=256,  # generator input size
            generator_width=64,  # ngf
            meta="fomaml",  # the meta update: "fomaml" (first-order MAML) or "reptile"
            reset_l0_round=140,  # re-draw the generator's first layer before this round; 0 = never
        ),
        # NAYER scripts/nayer_*.sh (the same weights for every teacher).
        nayer=_section(
            steps=40, warmup_rounds=20, lr=4e-3, bn_ema=0.9, a_bn=10.0, a_adv=1.33,
            a_oh=2.0,  # measured (reference 0.5): RESULTS.md, "Synthesis health"
            latent_dim=1000,  # the noisy layer's output size (le_emb_size)
            generator_width=64,
            embed="fixed",  # label embeddings: "fixed" (random) or "learned"
            embed_dim=512,  # label-embedding size (CLIP ViT-B/32 text width)
            reinit_every=20,  # re-initialise the generator every N rounds; g_life 10 x g_loops 2
        ),
        # Fast-Datafree scripts/cmi_cifar.sh.
        cmi=_section(
            steps=200, warmup_rounds=0, lr=1e-3, bn_ema=0.0, a_bn=1.0, a_oh=1.0, a_adv=0.5,
            latent_dim=256, generator_width=64,
            a_cr=0.8,  # the contrastive term's weight ...
            cr_temperature=0.2,  # ... its temperature,
            layers="all",  # ... the BN layers whose inputs are its features ("stage_last"),
            bank_size=40960,  # ... the feature bank (rows),
            negatives=4096,  # ... the negatives drawn from it per step,
            head_dim=256,  # ... and the projection size
        ),
        # Fast-Datafree scripts/deepinv_cifar.sh.
        deepinversion=_section(
            steps=1000, warmup_rounds=0, lr=0.1, bn_ema=0.0, a_bn=10.0, a_oh=1.0, a_adv=1.0,
            jitter=4,  # random roll of the batch in pixels (and flip): 1/8 of the image side
            a_tv=0.0, a_l2=0.0,  # pixel priors
        ),
    )  # fmt: skip


# Fast's loss weights (a_bn, a_oh, a_adv) per teacher in scripts/fast_cifar.sh.
FAST_TEACHER_WEIGHTS = {
    "resnet34": (10.0, 0.5, 1.33),
    "wrn40_2": (10.0, 0.4, 1.1),
    "vgg11": (10.0, 0.5, 1.0),
}


def stars_terms_on(c: ml_collections.ConfigDict) -> bool:
    """Whether any STARS term has a weight (all at 0: the baseline)."""
    return bool(c.synth.l_rca or c.synth.l_tar or c.distill.b_rca or c.distill.b_tar)


def set_fast_weights(c: ml_collections.ConfigDict, teacher: str | None) -> None:
    """Fast's loss weights for ``teacher`` where its reference has a row for it."""
    if teacher in FAST_TEACHER_WEIGHTS:
        fast = c.synth.fast
        fast.a_bn, fast.a_oh, fast.a_adv = FAST_TEACHER_WEIGHTS[teacher]


def set_all_methods(c: ml_collections.ConfigDict, **values) -> None:
    """Sets each key in every method's section that has it (a scale for all synthesizers)."""
    for key, value in values.items():
        owners = [m for m in METHODS if key in c.synth[m]]
        if not owners:
            raise KeyError(f"No synth.<method> section has the key {key!r}.")
        for m in owners:
            c.synth[m][key] = value


def synth_view(synth) -> ml_collections.ConfigDict:
    """What the synthesizers, the objective and the round loop read: ``config.synth``'s
    shared keys and those of the section of ``synth.method``, in one flat ConfigDict."""
    flat = {k: v for k, v in synth.items() if k not in METHODS}
    flat.update(synth[synth["method"]].items())
    return ml_collections.ConfigDict(flat)


def resolved(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of ``c`` whose ``synth`` is ``synth_view(c.synth)``."""
    out = ml_collections.ConfigDict({k: v for k, v in c.items() if k != "synth"})
    out.synth = synth_view(c["synth"])
    return out


# Keys of the flat layout (before the per-method sections) that a section renamed.
_RENAMED = {"cmi_layers": "layers", "cmi_bank_size": "bank_size"}
_RENAMED.update(cmi_negatives="negatives", cmi_head_dim="head_dim")


def old_key_path(key: str, method: str | None) -> str:
    """Today's path of a key of the flat layout (stored fingerprints, old command lines):
    ``synth.X`` of a method's setting -> ``synth.<method>.X`` (the section of ``method``
    where it has the key, else of the method that has it); every other key as it is."""
    section, _, name = key.partition(".")
    name = _RENAMED.get(name, name)
    sections = method_sections()
    owners = [m for m in METHODS if name in sections[m]]
    if section != "synth" or not owners:
        return key
    return f"synth.{method if method in owners else owners[0]}.{name}"


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
