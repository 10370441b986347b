"""Runs one synthesis step and one KD step (``steps``) or a tiny main job (``train``) on the
devices this process sees, and writes what the parallel tests compare to an .npz / JSON file.

Launched by tests/test_parallel.py in fresh processes, because the simulated CPU device count
(``--xla_force_host_platform_device_count``) must be set before JAX starts:

  python tests/parallel_check.py steps OUT.npz
  python tests/parallel_check.py train OUT.json DATA CACHE WORKDIR ROUNDS [coord NPROC PID]
"""

import dataclasses
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPE = (16, 16, 3)
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def run_steps(out: str) -> None:
    from stars_jax import parallel
    from stars_jax.config import base_config, set_all_methods, synth_view
    from stars_jax.distill import KDContext, init_train_state, kd_step, make_optimizer
    from stars_jax.models.students import make_student
    from stars_jax.models.teachers import make_teacher
    from stars_jax.synthesis import StepInputs, make_synthesizer

    mesh = parallel.make_mesh()
    rep, sh = parallel.replicated(mesh), parallel.data_sharded(mesh)
    cfg = base_config()
    cfg.synth.batch_size = 16
    set_all_methods(cfg, generator_width=8, latent_dim=16)
    cfg.synth.nayer.embed_dim = 8
    cmi = cfg.synth.cmi
    cmi.bank_size, cmi.negatives, cmi.head_dim, cmi.a_cr = 32, 16, 8, 0.8
    # No crop or flip (as in the KD step below): 1 and 8 devices then see the same pixels.
    cfg.synth.crop_pad, cfg.synth.flip = 0, False
    teacher, student = make_teacher("resnet_tiny", 4), make_student("resnet_tiny", 4, 2)
    tv = teacher.init(jax.random.key(0), jnp.zeros((2, *SHAPE)))
    tv = {"params": tv["params"], "batch_stats": jax.tree.map(lambda a: a + 0.2, tv["batch_stats"])}
    opt = make_optimizer(cfg.distill)
    state = init_train_state(student, opt, jax.random.key(1), SHAPE, 10)
    tv, state = parallel.put(jax.device_get((tv, state)), rep)
    results = {}
    for method in ("deepinversion", "fast", "nayer", "cmi"):
        cfg.synth.method = method
        syn = make_synthesizer(synth_view(cfg.synth), teacher, student, SHAPE, 4, MEAN, STD, sh)
        syn_state = parallel.put(jax.device_get(syn.init(jax.random.key(2), tv)), rep)
        syn_state, work = jax.jit(syn.begin)(syn_state, jax.random.key(3), 0)
        step = jax.jit(syn.step)
        for i in range(2):  # the second step sees CMI's bank empty, NAYER's Adam warm
            work, m = step(syn_state, work, StepInputs(tv, state.variables, jax.random.key(4 + i)))
        syn_state, images, _ = jax.jit(syn.end)(syn_state, work)
        if method == "cmi":  # a round later the bank holds a batch: negatives in play
            syn_state, work = jax.jit(syn.begin)(syn_state, jax.random.key(6), 1)
            work, m2 = step(syn_state, work, StepInputs(tv, state.variables, jax.random.key(7)))
            m = {**m, **{f"round2/{k}": v for k, v in m2.items()}}
        for k, v in m.items():
            results[f"{method}/{k}"] = np.asarray(v)
        results[f"{method}/images"] = parallel.fetch(images)
    # No augmentation, so the per-device counterfactual below sees the very same images.
    ctx = KDContext(
        teacher,
        student,
        opt,
        MEAN,
        STD,
        b_rca=1.0,
        batch_sharding=sh,
        lr=cfg.distill.lr,
        warmup_steps=1,
    )
    batch = np.random.default_rng(0).integers(0, 256, (16, *SHAPE), dtype=np.uint8)
    new_state, m = jax.jit(lambda s, b, k: kd_step(ctx, s, tv, b, k))(
        state, parallel.put(batch, sh), jax.random.key(5)
    )
    for k, v in m.items():
        results[k] = np.asarray(v)
    # Counterfactual: BN statistics per device (8 chunks of 2), as pmap without sync would do.
    local = dataclasses.replace(ctx, batch_sharding=None)
    host_state, host_tv = jax.device_get((state, tv))
    chunk_vars = [
        kd_step(local, host_state, host_tv, c, jax.random.key(5))[0].batch_stats["bn1"]["var"]
        for c in np.split(batch, 8)
    ]
    results["per_device_bn/bn1_var"] = np.mean(chunk_vars, axis=0)
    flat = jax.tree_util.tree_flatten_with_path(parallel.fetch(new_state.variables))[0]
    for path, leaf in flat:
        results["state" + jax.tree_util.keystr(path)] = leaf
    results["num_devices"] = np.asarray(jax.device_count())
    np.savez(out, **results)


def run_train(out, data, cache, workdir, rounds, *dist) -> None:
    from stars_jax import parallel, train
    from stars_jax.config import load_config_file

    if dist:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        parallel.maybe_initialize_distributed(dist[0], int(dist[1]), int(dist[2]))
    c = load_config_file(ROOT / "configs" / "tiny.py", data)
    c.teacher.cache_dir = cache
    c.distill.rounds = int(rounds)
    c.synth.batch_size = c.distill.batch_size = 16
    # A budget that never binds: the run is unchanged, but its per-round budget decisions
    # (broadcast from process 0) run, so two processes must agree on them or deadlock.
    c.distill.time_budget_s = 1e6
    summary = train.train_and_evaluate(c, workdir)
    last = json.loads((Path(workdir) / "metrics.jsonl").read_text().splitlines()[-1])
    # Every process must see process 0's value (budget decisions steer collectives).
    agreed = parallel.agree(10.0 + jax.process_index())
    if agreed != 10.0:
        raise SystemExit(f"parallel.agree gave {agreed} on process {jax.process_index()}")
    if jax.process_index() == 0:
        Path(out).write_text(json.dumps({"summary": summary, "last": last}))


if __name__ == "__main__":
    if sys.argv[1] == "steps":
        run_steps(sys.argv[2])
    else:
        run_train(*sys.argv[2:])
