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

    c.synth = ml_collections.ConfigDict()
    c.synth.method = "fast"  # "fast" (generator) or "deepinversion" (pixels).
    c.synth.batch_size = 64  # Images synthesised per round.
    c.synth.steps = 5  # Optimisation steps per round (Fast's g_steps).
    c.synth.lr = 5e-3  # Generator (Fast) or pixel (DeepInversion) Adam learning rate.
    c.synth.lr_z = 0.015  # Latent learning rate (Fast).
    c.synth.latent_dim = 256
    c.synth.generator_width = 32  # Fast's ngf.
    c.synth.reptile = True  # Reptile meta update of the persistent generator.
    c.synth.meta_lr_scale = 1.0  # Meta Adam lr = lr * steps * scale (Fast's convention).
    c.synth.reset_l0 = False  # Re-initialise the generator's first layer every round (Fast).
    c.synth.bn_ema = 0.9  # Blend batch statistics with their EMA over rounds (Fast's bn_mmt).
    c.synth.jitter = 2  # Random shift in pixels (and flip) before the teacher, DeepInversion.
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

    c.distill = ml_collections.ConfigDict()
    c.distill.mode = "data_free"  # or "real_data": KD on the real training set (upper bound).
    c.distill.rounds = 45
    c.distill.kd_steps = 20  # Student updates per round.
    c.distill.batch_size = 64
    c.distill.optimizer = "adam"  # "sgd" (nesterov, momentum 0.9) or "adam".
    c.distill.lr = 5e-3  # Peak; linear warm-up then cosine to 0.
    c.distill.warmup_rounds = 2
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

    c.log = ml_collections.ConfigDict()
    c.log.every = 1  # Rounds between console lines.
    c.log.grid_images = 64  # Synthetic images in the PNG grid written at each evaluation.
    return c


def load_config_file(path, arg=None) -> ml_collections.ConfigDict:
    """``get_config(arg)`` of a config file given by path (configs build on one another)."""
    import importlib.util
    from pathlib import Path

    path = Path(path)
    spec = importlib.util.spec_from_file_location(f"stars_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)
