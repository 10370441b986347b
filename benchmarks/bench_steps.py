"""Times the two hot steps of data-free ANN-to-SNN KD: stars_jax vs PyTorch (+ SpikingJelly).

(a) synthesis step: DeepInversion-style pixel update with the adversarial student term
    (teacher + spiking student forward, backward to the pixels, L_BN + CE + adversarial);
(b) KD step: teacher forward, spiking student forward and backward, optimizer update.

Reference setting (the default): resnet34 teacher, spiking resnet18 student, T=4, batch 256,
32x32x3. Both implementations run in the same invocation on the same device; each time is the
median of ``--steps`` device-synchronised steps after ``--warmup``; compile time is separate.
Each PyTorch mode runs in a child process with a time limit (``--torch_timeout``), so a
``torch.compile`` that does not finish is reported as such instead of stalling the run. FLOPs
are XLA's count for the stars_jax step (the same work on both sides); memory is per step
(XLA's buffer assignment; PyTorch's allocator peak during the step).

  python benchmarks/bench_steps.py                       # reference setting, on the GPU
  python benchmarks/bench_steps.py --tiny --steps 3      # seconds on a CPU (what CI runs)

Prints a table and, with ``--out``, writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stars_jax.apply import NORMALIZATION  # noqa: E402
from stars_jax.config import base_config  # noqa: E402
from stars_jax.distill import KDContext, init_train_state, kd_step, make_optimizer  # noqa: E402
from stars_jax.models.students import SpikingResNet  # noqa: E402
from stars_jax.models.teachers import ResNet  # noqa: E402
from stars_jax.synthesis import make_synthesizer  # noqa: E402

# Dense peak of one device, FLOP/s, by JAX device_kind substring: (bf16, fp32 non-tensor-core).
PEAKS = {"H200": (989e12, 67e12), "H100": (989e12, 67e12), "A100": (312e12, 19.5e12)}
MEAN, STD = NORMALIZATION["cifar10"]


def _setting(tiny: bool):
    if tiny:
        return dict(t_stages=(1, 1), s_stages=(1, 1), widths=(8, 16), batch=8, T=2, size=16)
    return dict(
        t_stages=(3, 4, 6, 3),
        s_stages=(2, 2, 2, 2),
        widths=(64, 128, 256, 512),
        batch=256,
        T=4,
        size=32,
    )


def _timed(step, carry, args, steps, warmup, sync):
    for _ in range(warmup):
        carry = step(carry, *args)
    sync(carry)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        carry = step(carry, *args)
        sync(carry)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _step_bytes(compiled):
    """Device memory one step needs (arguments + outputs + temporaries - donated aliases),
    from XLA's buffer assignment: per step, unlike the process-wide allocator peak."""
    m = compiled.memory_analysis()
    if m is None:
        return None
    return (
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        + m.temp_size_in_bytes
        - m.alias_size_in_bytes
    )


def _flops(compiled):
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float(cost.get("flops", float("nan"))) if cost else float("nan")


def jax_cases(s, dtype_name: str):
    """``[(step name, fn(carry, *args) -> carry, carry, args)]`` for the two hot steps, at
    setting ``s`` in ``dtype_name`` compute (also what ``inspect_steps.py`` lowers)."""
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype_name]
    shape = (s["size"], s["size"], 3)
    teacher = ResNet(stage_sizes=s["t_stages"], widths=s["widths"], dtype=dtype)
    student = SpikingResNet(
        stage_sizes=s["s_stages"], widths=s["widths"], time_steps=s["T"], dtype=dtype
    )
    tv = teacher.init(jax.random.key(0), jnp.zeros((2, *shape)))
    cfg = base_config()
    syn_cfg = cfg.synth
    syn_cfg.method, syn_cfg.batch_size, syn_cfg.jitter = "deepinversion", s["batch"], 0
    syn_cfg.a_bn, syn_cfg.a_oh, syn_cfg.a_adv, syn_cfg.l_rca, syn_cfg.l_tar = 1, 1, 0.5, 0, 0
    syn_cfg.lr = 0.1
    cfg.distill.optimizer = "sgd"  # nesterov, momentum 0.9, lr 0.1: what the PyTorch side runs
    cfg.distill.nesterov = True
    opt = make_optimizer(cfg.distill)
    st = init_train_state(student, opt, jax.random.key(1), shape, 1000)
    syn = make_synthesizer(syn_cfg, teacher, student, shape, 10, MEAN, STD)
    syn_state, work = syn.begin(syn.init(jax.random.key(2), tv), jax.random.key(2), 0)
    ctx = KDContext(
        teacher,
        student,
        opt,
        MEAN,
        STD,
        4.0,
        False,
        0.0,
        "logits",
        0,
        False,
        dtype,
        lr=0.1,
        warmup_steps=0,
    )
    images = jax.random.randint(jax.random.key(3), (s["batch"], *shape), 0, 256).astype(jnp.uint8)
    key = jax.random.key(4)
    return [
        (
            "synthesis",
            lambda w, t, sv: syn.step(syn_state, w, t, sv, key)[0],
            work,
            (tv, st.variables),
        ),
        ("kd", lambda c, t, x: kd_step(ctx, c, t, x, key)[0], st, (tv, images)),
    ]


def bench_jax(s, dtype_name: str, steps: int, warmup: int, dump_hlo: str = "") -> list[dict]:
    rows = []
    for name, fn, carry, args in jax_cases(s, dtype_name):
        jitted = jax.jit(fn, donate_argnums=0)
        t0 = time.perf_counter()
        compiled = jitted.lower(carry, *args).compile()
        compile_s = time.perf_counter() - t0
        if dump_hlo:  # XLA's optimised module: fusions, layouts, library calls
            Path(dump_hlo).mkdir(parents=True, exist_ok=True)
            Path(dump_hlo, f"{name}_{dtype_name}.hlo.txt").write_text(compiled.as_text())
        median = _timed(compiled, carry, args, steps, warmup, jax.block_until_ready)
        rows.append(
            dict(
                impl="stars_jax",
                mode=dtype_name,
                step=name,
                ms=1e3 * median,
                compile_s=compile_s,
                flops=_flops(compiled),
                step_bytes=_step_bytes(compiled),
            )
        )
    return rows


def bench_torch(s, mode: str, steps: int, warmup: int, timeout_s: float, tiny: bool) -> list[dict]:
    """Runs one PyTorch mode in a child process: its GPU memory, caches and compile threads
    stay apart from JAX's, and a compile that never finishes costs ``timeout_s``, not the run."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--torch_child",
        mode,
        "--steps",
        str(steps),
        "--warmup",
        str(warmup),
    ]
    cmd += ["--tiny"] if tiny else []
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}  # the child must not take the GPU for JAX
    # A session of its own, so a timeout also ends torch.compile's worker processes.
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    timed_out = False
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:  # keep the steps that finished before the limit
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        timed_out = True
    rows = [json.loads(x[4:]) for x in out.splitlines() if x.startswith("ROW ")]
    if not timed_out and (proc.returncode or len(rows) < 2):
        raise RuntimeError(f"torch {mode} failed:\n{out[-2000:]}\n{err[-4000:]}")
    done = {r["step"] for r in rows}
    for step in ("synthesis", "kd"):
        if step not in done:
            print(f"torch {mode} {step}: no result within {timeout_s:.0f} s", flush=True)
            rows.append(
                dict(
                    impl="torch",
                    mode=mode,
                    step=step,
                    ms=float("nan"),
                    compile_s=float("nan"),
                    flops=float("nan"),
                    step_bytes=None,
                    note=f"no result within {timeout_s:.0f} s",
                )
            )
    return rows


def torch_child(s, mode: str, steps: int, warmup: int) -> list[dict]:
    import torch

    from benchmarks.torch_steps import ResNet as TResNet
    from benchmarks.torch_steps import bn_hooks, make_kd_step, make_neuron, make_synth_step

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.benchmark = True
    factory, backend = make_neuron(s["T"])
    teacher = TResNet(s["t_stages"], s["widths"]).to(dev).eval()
    student = TResNet(s["s_stages"], s["widths"], spiking_neuron=factory, T=s["T"]).to(dev)
    stats = bn_hooks(teacher)
    x = torch.randn(s["batch"], 3, s["size"], s["size"], device=dev, requires_grad=True)
    y = torch.randint(0, 10, (s["batch"],), device=dev)
    synth = make_synth_step(teacher, student.eval(), stats)
    kd_opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    kd = make_kd_step(teacher, student, kd_opt)
    compile_fn = (lambda f: torch.compile(f)) if mode == "bf16-compile" else (lambda f: f)
    autocast = torch.autocast(dev, dtype=torch.bfloat16, enabled=mode != "eager-fp32")
    sync = (lambda _: torch.cuda.synchronize()) if dev == "cuda" else (lambda _: None)
    rows = []
    x_opt = torch.optim.Adam([x], lr=0.1, betas=(0.5, 0.9))
    cases = [
        ("synthesis", compile_fn(lambda: synth(x, x_opt, y)), lambda: student.eval()),
        ("kd", compile_fn(lambda: kd(x.detach())), lambda: student.train()),
    ]
    for name, fn, set_mode in cases:
        set_mode()
        if dev == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with autocast:
            t0 = time.perf_counter()
            fn()
            sync(None)
            compile_s = time.perf_counter() - t0  # first call: compiles when compiled
            median = _timed(lambda c, f=fn: (f(), c)[1], None, (), steps, warmup, sync)
        peak = torch.cuda.max_memory_allocated() if dev == "cuda" else None
        rows.append(
            dict(
                impl=f"torch+{backend}",
                mode=mode,
                step=name,
                ms=1e3 * median,
                compile_s=compile_s if mode == "bf16-compile" else 0.0,
                flops=float("nan"),
                step_bytes=peak,
            )
        )
        print("ROW " + json.dumps(rows[-1]), flush=True)
    return rows


def report(rows: list[dict]) -> str:
    kind = jax.devices()[0].device_kind
    peak = next((v for k, v in PEAKS.items() if k in kind), None)
    jax_flops = {r["step"]: r["flops"] for r in rows if r["impl"] == "stars_jax"}
    torch_rows = [r for r in rows if r["impl"].startswith("torch") and r["ms"] == r["ms"]]
    eager = {r["step"]: r["ms"] for r in torch_rows if r["mode"] == "eager-fp32"}
    fastest = {}
    for r in torch_rows:
        fastest[r["step"]] = min(fastest.get(r["step"], float("inf")), r["ms"])
    lines = [
        f"device: {kind}",
        "| impl | mode | step | ms | eager torch / this | fastest torch / this | "
        "compile s | TFLOP/s | % peak | step GiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        flops = jax_flops.get(r["step"], float("nan"))  # the same work on both sides
        tflops = flops / (r["ms"] / 1e3) / 1e12
        frac = "n/a"
        if peak and not np.isnan(tflops):
            frac = f"{100 * tflops * 1e12 / peak[0 if 'bf' in r['mode'] else 1]:.1f}"
        gib = f"{r['step_bytes'] / 2**30:.2f}" if r.get("step_bytes") else "n/a"
        lines.append(
            f"| {r['impl']} | {r['mode']} | {r['step']} | {r['ms']:.2f} | "
            f"{eager.get(r['step'], float('nan')) / r['ms']:.2f}x | "
            f"{fastest.get(r['step'], float('nan')) / r['ms']:.2f}x | {r['compile_s']:.1f} | "
            f"{tflops:.1f} | {frac} | {gib} |" + (f" {r['note']}" if r.get("note") else "")
        )
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny models and batch (CPU check)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--jax_dtypes", default="float32,bfloat16")
    p.add_argument(
        "--torch_modes",
        default="eager-fp32,bf16-compile",
        help="eager-fp32, bf16-eager, bf16-compile (comma list); '' skips",
    )
    p.add_argument("--out", default="")
    p.add_argument("--dump_hlo", default="", help="write each compiled stars_jax step here")
    p.add_argument(
        "--torch_timeout",
        type=float,
        default=300.0,
        help="seconds for each PyTorch mode, compilation included",
    )
    p.add_argument("--torch_child", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    s = _setting(args.tiny)
    if args.torch_child:  # one PyTorch mode, in the child process bench_torch started
        torch_child(s, args.torch_child, args.steps, args.warmup)  # prints a ROW line per step
        return []
    rows = []
    for mode in filter(None, args.torch_modes.split(",")):
        rows += bench_torch(s, mode, args.steps, args.warmup, args.torch_timeout, args.tiny)
    for dt in filter(None, args.jax_dtypes.split(",")):
        rows += bench_jax(s, dt, args.steps, args.warmup, args.dump_hlo)
    table = report(rows)
    print(f"setting: {s}\n{table}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"setting": s, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
