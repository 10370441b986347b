"""Times the two hot steps of data-free ANN-to-SNN KD, and a whole DFKD round: stars_jax vs
PyTorch (+ SpikingJelly).

(a) synthesis step: DeepInversion-style pixel update with the adversarial student term
    (teacher + spiking student forward, backward to the pixels, L_BN + CE + adversarial);
(b) KD step: teacher forward, spiking student forward and backward, optimizer update;
(c) round (``--tables round``): ``--round_synth_steps`` synthesis steps, the kept batch into
    the memory bank, ``--round_kd_steps`` KD steps from the bank (``distill.run_round``).

Reference setting (the default): resnet34 teacher, spiking resnet18 student, T=4, batch 256,
32x32x3. Both implementations run in the same invocation on the same device; each time is the
median of ``--steps`` device-synchronised steps after ``--warmup`` (rounds: ``--rounds``
after one that compiles); compile time is separate. Each PyTorch mode runs in a child process
(``torch_steps.py``) with a time limit (``--torch_timeout``), so a ``torch.compile`` that does
not finish is reported as such instead of stalling the run. FLOPs are analytic
(``benchmarks/flops.py``: the same work on both sides; XLA's own count, which misses
convolutions run as cuDNN calls, is a separate column); memory is per step (XLA's buffer
assignment; PyTorch's allocator peak during the step).

  python benchmarks/bench_steps.py                       # reference setting, on the GPU
  python benchmarks/bench_steps.py --tables round        # the round table
  python benchmarks/bench_steps.py --tiny --steps 3      # seconds on a CPU (what CI runs)
  python benchmarks/bench_steps.py --setting cifar10_cpu --jax_dtypes float32 \
      --torch_modes eager-fp32                            # a CPU setup's shapes (RESULTS.md)
  python benchmarks/bench_steps.py --profile DIR         # traces + per-kernel table instead

Prints the tables and, with ``--out``, writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import flops  # noqa: E402
from stars_jax.apply import NORMALIZATION  # noqa: E402
from stars_jax.bank import init_bank  # noqa: E402
from stars_jax.config import base_config, synth_view  # noqa: E402
from stars_jax.distill import (  # noqa: E402
    KDContext,
    init_train_state,
    kd_step,
    make_optimizer,
    make_round_steps,
    run_round,
)
from stars_jax.models.students import SpikingResNet  # noqa: E402
from stars_jax.models.teachers import ResNet  # noqa: E402
from stars_jax.synthesis import SYNTHESIZERS, StepInputs, make_synthesizer  # noqa: E402

# Dense peak of one device, FLOP/s, by JAX device_kind substring (first match): (bf16, fp32).
# fp32 is TF32 tensor-core peak: both sides' fp32 convolutions run TF32 by default on these
# GPUs (XLA's default precision; PyTorch's cudnn.allow_tf32).
PEAKS = {
    "H100 PCIe": (756e12, 378e12),
    "H200": (989e12, 495e12),
    "H100": (989e12, 495e12),
    "A100": (312e12, 156e12),
}
MEAN, STD = NORMALIZATION["cifar10"]


def _norm(s) -> tuple:
    """The setting's input normalisation: Fashion-MNIST's for grey images, else CIFAR-10's."""
    return NORMALIZATION["fashion_mnist"] if s.get("channels", 3) == 1 else (MEAN, STD)


NUM_CLASSES = 10
TABLES = ("steps", "round")


# The CPU setups' shapes (configs/default.py and configs/cifar10_cpu.py): teacher, spiking
# student, T, batch (synthesis and KD), image size and channels.
CPU_SETTINGS = {
    "default_cpu": dict(  # Fashion-MNIST: resnet_small teacher -> spiking resnet_small
        t_stages=(1, 1), t_widths=(16, 32), s_stages=(1, 1), widths=(16, 32),
        batch=64, T=2, size=28, channels=1,
    ),
    "cifar10_cpu": dict(  # CIFAR-10: resnet14 teacher -> spiking resnet_small
        t_stages=(2, 2, 2), t_widths=(16, 32, 64), s_stages=(1, 1), widths=(16, 32),
        batch=64, T=2, size=32, channels=3,
    ),
}  # fmt: skip
SETTINGS = ("reference", "tiny", *CPU_SETTINGS)


def _setting(tiny: bool | str):
    """A setting by name (``SETTINGS``; True: ``tiny``, False: ``reference``). ``widths`` are
    the student's, and the teacher's unless ``t_widths`` is given; ``channels`` default 3."""
    name = {True: "tiny", False: "reference"}.get(tiny, tiny)
    if name in CPU_SETTINGS:
        return dict(CPU_SETTINGS[name])
    if name == "tiny":
        generator = dict(generator_width=8, latent_dim=16, embed_dim=16, bank_size=64)
        generator.update(negatives=16, head_dim=16)  # generator methods' round
        return dict(
            t_stages=(1, 1),
            s_stages=(1, 1),
            widths=(8, 16),
            batch=8,
            T=2,
            size=16,
            generator=generator,
        )
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


def _xla_flops(compiled):
    """XLA's own count: on a GPU it misses the convolutions run as cuDNN custom calls."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float(cost.get("flops", float("nan"))) if cost else float("nan")


def _models(s, dtype):
    t_widths = s.get("t_widths", s["widths"])
    teacher = ResNet(stage_sizes=s["t_stages"], widths=t_widths, dtype=dtype)
    student = SpikingResNet(
        stage_sizes=s["s_stages"], widths=s["widths"], time_steps=s["T"], dtype=dtype
    )
    return teacher, student


def _synth_cfg(s, method: str = "deepinversion"):
    """``config.synth`` of the benchmark: DeepInversion with CMI's weights (what the PyTorch
    side runs), or another synthesizer at its reference settings; STARS terms off."""
    cfg = base_config()
    cfg.synth.method, cfg.synth.batch_size, cfg.synth.l_rca, cfg.synth.l_tar = (
        method,
        s["batch"],
        0,
        0,
    )
    if method == "deepinversion":
        di = cfg.synth.deepinversion
        di.jitter, di.a_bn, di.a_oh, di.a_adv, di.lr = 0, 1, 1, 0.5, 0.1
    syn = synth_view(cfg.synth)
    syn.update({k: v for k, v in s.get("generator", {}).items() if k in syn})
    return syn


def _jax_setup(s, dtype_name: str, method: str = "deepinversion"):
    """Models, variables, student state, synthesizer and KD context at setting ``s``."""
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype_name]
    shape = (s["size"], s["size"], s.get("channels", 3))
    teacher, student = _models(s, dtype)
    tv = teacher.init(jax.random.key(0), jnp.zeros((2, *shape)))
    cfg = base_config()
    cfg.distill.optimizer = "sgd"  # nesterov, momentum 0.9, lr 0.1: what the PyTorch side runs
    cfg.distill.nesterov = True
    opt = make_optimizer(cfg.distill)
    st = init_train_state(student, opt, jax.random.key(1), shape, 1000)
    syn_cfg = _synth_cfg(s, method)
    mean, std = _norm(s)
    syn = make_synthesizer(syn_cfg, teacher, student, shape, NUM_CLASSES, mean, std)
    ctx = KDContext(teacher, student, opt, mean, std, dtype=dtype, lr=0.1)
    return SimpleNamespace(shape=shape, tv=tv, st=st, syn_cfg=syn_cfg, syn=syn, ctx=ctx)


def jax_cases(s, dtype_name: str):
    """``[(step name, fn(carry, *args) -> carry, carry, args)]`` for the two hot steps, at
    setting ``s`` in ``dtype_name`` compute (also what ``inspect_steps.py`` lowers)."""
    j = _jax_setup(s, dtype_name)
    syn_state, work = j.syn.begin(j.syn.init(jax.random.key(2), j.tv), jax.random.key(2), 0)
    images = jax.random.randint(jax.random.key(3), (s["batch"], *j.shape), 0, 256)
    images = images.astype(jnp.uint8)
    key = jax.random.key(4)
    return [
        (
            "synthesis",
            lambda w, t, sv: j.syn.step(syn_state, w, StepInputs(t, sv, key))[0],
            work,
            (j.tv, j.st.variables),
        ),
        ("kd", lambda c, t, x: kd_step(j.ctx, c, t, x, key)[0], j.st, (j.tv, images)),
    ]


def analytic_flops(s, r: dict | None) -> dict[str, int]:
    """FLOPs of each benchmarked step (``benchmarks/flops.py``), and of the round if ``r``."""
    teacher, student = _models(s, jnp.float32)
    shape = (s["size"], s["size"], s.get("channels", 3))
    out = {
        "synthesis": flops.synthesis_step_flops(
            _synth_cfg(s), teacher, student, shape, NUM_CLASSES
        ),
        "kd": flops.kd_step_flops(teacher, student, s["batch"], shape),
    }
    if r:
        cfg = _synth_cfg(s, r["method"])
        out["round"] = flops.round_flops(
            cfg, teacher, student, shape, NUM_CLASSES, s["batch"], r["synth_steps"], r["kd_steps"]
        )
    return out


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
                xla_flops=_xla_flops(compiled),
                step_bytes=_step_bytes(compiled),
                images=s["batch"],
            )
        )
    return rows


def bench_jax_round(s, dtype_name: str, r: dict) -> dict:
    """Times ``distill.run_round`` with the steps ``train.py`` jits (``make_round_steps``):
    the first round compiles, then the median of ``r["rounds"]``, each synchronised."""
    j = _jax_setup(s, dtype_name, r["method"])
    steps = make_round_steps(j.syn, j.ctx, s["batch"], j.syn_cfg)
    carry = (j.st, j.syn.init(jax.random.key(2), j.tv), init_bank(r["bank_size"], j.shape))
    key = jax.random.key(5)

    def one(carry, i):
        k = jax.random.fold_in(key, i)
        carry, _ = run_round(steps, carry, j.tv, k, i, r["synth_steps"], r["kd_steps"])
        return jax.block_until_ready(carry)

    t0 = time.perf_counter()
    carry = one(carry, 0)
    first_s = time.perf_counter() - t0
    times = []
    for i in range(1, r["rounds"] + 1):
        t0 = time.perf_counter()
        carry = one(carry, i)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return dict(
        impl="stars_jax",
        mode=dtype_name,
        step="round",
        ms=1e3 * median,
        compile_s=first_s - median,  # the first round's excess
        xla_flops=float("nan"),
        step_bytes=None,
        images=s["batch"] * (1 + r["kd_steps"]),  # kept + KD images, as train.py counts
    )


def _missing(mode: str, step: str, note: str) -> dict:
    return dict(
        impl="torch",
        mode=mode,
        step=step,
        ms=float("nan"),
        compile_s=float("nan"),
        step_bytes=None,
        images=0,
        note=note,
    )


def bench_torch(spec: dict, timeout_s: float) -> list[dict]:
    """Runs one PyTorch mode (``spec``: see ``torch_steps.run_mode``) in a child process: its
    GPU memory, caches and compile threads stay apart from JAX's, and a compile that never
    finishes costs ``timeout_s``, not the run."""
    cmd = [sys.executable, str(Path(__file__).with_name("torch_steps.py"))]
    cmd += ["--spec", json.dumps(spec)]
    # A session of its own, so a timeout also ends torch.compile's worker processes.
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    timed_out = False
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:  # keep the steps that finished before the limit
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        timed_out = True
    rows = [json.loads(x[4:]) for x in out.splitlines() if x.startswith("ROW ")]
    wanted = [x for t in spec["tables"] for x in (("synthesis", "kd") if t == "steps" else [t])]
    note = f"no result within {timeout_s:.0f} s"
    if not timed_out and proc.returncode:  # one mode failing must not lose the others' rows
        print(f"torch {spec['mode']} failed:\n{out[-2000:]}\n{err[-4000:]}", flush=True)
        note = "failed: " + (err.strip().splitlines() or ["?"])[-1][:200]
    done = {r["step"] for r in rows}
    for step in wanted:
        if step not in done:
            print(f"torch {spec['mode']} {step}: {note}", flush=True)
            rows.append(_missing(spec["mode"], step, note))
    return rows


# ------------------------------------------------------------------------------- profiling

# Lines the trace viewer derives from the kernels (they would count each kernel twice).
DERIVED_LINES = ("XLA Modules", "XLA Ops", "Steps", "Framework Name Scope", "Framework Ops")


def load_trace(trace_dir) -> dict:
    """The Chrome-format trace ``jax.profiler.trace`` wrote under ``trace_dir`` (newest)."""
    files = sorted(Path(trace_dir).rglob("*.trace.json.gz"), key=os.path.getmtime)
    files = files or sorted(Path(trace_dir).rglob("perfetto_trace.json.gz"), key=os.path.getmtime)
    if not files:
        raise FileNotFoundError(f"No *.trace.json.gz under {trace_dir}.")
    with gzip.open(files[-1], "rt") as f:
        return json.load(f)


def kernel_events(trace: dict) -> list[dict]:
    """Kernel executions: on a GPU the events of the device's stream lines; on a CPU, XLA's
    thunks (the host events that name an ``hlo_op``)."""
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    procs, threads = {}, {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "process_name":
            procs[e["pid"]] = e["args"]["name"]
        elif e.get("ph") == "M" and e.get("name") == "thread_name":
            threads[e["pid"], e.get("tid")] = e["args"]["name"]
    done = [e for e in events if e.get("ph") == "X" and not e["name"].startswith("end: ")]
    devices = {p for p, n in procs.items() if n.startswith("/device:")}
    if not devices:
        return [e for e in done if "hlo_op" in e.get("args", {})]
    streams = {k for k, n in threads.items() if k[0] in devices and n.startswith("Stream")}
    if streams:
        return [e for e in done if (e["pid"], e.get("tid")) in streams]
    line = lambda e: threads.get((e["pid"], e.get("tid")), "")
    return [e for e in done if e["pid"] in devices and line(e) not in DERIVED_LINES]


def kernel_table(trace: dict, steps: int, top: int, step_name: str = "") -> dict:
    """The ``top`` kernels by total time, per step: ``{"kernel_us_per_step", "wall_us_per_step",
    "kernels", "top": [{kernel, hlo_op, calls_per_step, us_per_step, pct}]}``; kernel time is
    summed over streams, wall time is the ``step_name`` annotations' mean."""
    agg = {}
    for e in kernel_events(trace):
        a = agg.setdefault(e["name"], {"hlo_op": e.get("args", {}).get("hlo_op", ""), "us": 0.0})
        a["us"] += e["dur"]
        a["calls"] = a.get("calls", 0) + 1
    total = sum(a["us"] for a in agg.values())
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    walls = [e["dur"] for e in events if e.get("name") == step_name and e.get("ph") == "X"]
    ranked = sorted(agg.items(), key=lambda kv: -kv[1]["us"])[:top]
    return dict(
        kernel_us_per_step=total / steps,
        wall_us_per_step=statistics.mean(walls) if walls else float("nan"),
        kernels=len(agg),
        top=[
            dict(
                kernel=name,
                hlo_op=a["hlo_op"],
                calls_per_step=a["calls"] / steps,
                us_per_step=a["us"] / steps,
                pct=100 * a["us"] / (total or 1),
            )
            for name, a in ranked
        ],
    )


def _kernel_markdown(tables: dict) -> str:
    lines = []
    for case, t in tables.items():
        lines += [
            f"### {case}: {t['kernels']} kernels, {t['kernel_us_per_step']:.0f} us of kernel "
            f"time per step (summed over streams), {t['wall_us_per_step']:.0f} us wall per step",
            "| # | kernel | hlo op | calls/step | us/step | % |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for i, k in enumerate(t["top"], 1):
            name = k["kernel"] if len(k["kernel"]) <= 90 else k["kernel"][:87] + "..."
            lines.append(
                f"| {i} | `{name}` | {k['hlo_op']} | {k['calls_per_step']:g} | "
                f"{k['us_per_step']:.1f} | {k['pct']:.1f} |"
            )
        lines.append("")
    return "\n".join(lines)


def profile_jax(s, dtypes, out_dir: str, steps: int, top: int) -> dict:
    """Profiles ``steps`` synchronised runs of each hot step (after one untraced run) into
    ``out_dir/<step>_<dtype>/`` and writes the per-kernel tables as ``kernels.{md,json}``."""
    tables = {}
    for dt in dtypes:
        for name, fn, carry, args in jax_cases(s, dt):
            compiled = jax.jit(fn, donate_argnums=0).lower(carry, *args).compile()
            carry = jax.block_until_ready(compiled(carry, *args))
            trace_dir = Path(out_dir, f"{name}_{dt}")
            with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
                for i in range(steps):
                    with jax.profiler.StepTraceAnnotation(name, step_num=i):
                        carry = jax.block_until_ready(compiled(carry, *args))
            tables[f"{name}/{dt}"] = kernel_table(load_trace(trace_dir), steps, top, name)
    md = f"device: {jax.devices()[0].device_kind}\n\n" + _kernel_markdown(tables)
    Path(out_dir, "kernels.md").write_text(md)
    Path(out_dir, "kernels.json").write_text(json.dumps(tables, indent=1))
    print(md, flush=True)
    return tables


# ---------------------------------------------------------------------------------- report


_COMMON = ["eager torch / this", "fastest torch / this", "compile s", "TFLOP/s", "% peak"]
STEP_COLUMNS = ["impl", "mode", "step", "ms", *_COMMON, "XLA's TFLOP/s", "step GiB"]
ROUND_COLUMNS = ["impl", "mode", "round ms", "images/s", *_COMMON, "GiB"]


def _cells(r: dict, eager: dict, fastest: dict, peak, is_round: bool) -> list[str]:
    seconds = r["ms"] / 1e3
    tflops = r["flops"] / seconds / 1e12
    frac = "n/a"
    if peak and not np.isnan(tflops):
        frac = f"{100 * tflops * 1e12 / peak[0 if 'bf' in r['mode'] else 1]:.1f}"
    lead = [f"{r['ms']:.1f}", f"{r['images'] / seconds:,.0f}"]
    if not is_round:
        lead = [r["step"], f"{r['ms']:.2f}"]
    cells = [
        r["impl"],
        r["mode"],
        *lead,
        f"{eager.get(r['step'], float('nan')) / r['ms']:.2f}x",
        f"{fastest.get(r['step'], float('nan')) / r['ms']:.2f}x",
        f"{r['compile_s']:.1f}",
        f"{tflops:.3g}",
        frac,
    ]
    if not is_round:
        cells.append(f"{r.get('xla_flops', float('nan')) / seconds / 1e12:.3g}")
    return cells + [f"{r['step_bytes'] / 2**30:.3g}" if r.get("step_bytes") else "n/a"]


def _table(rows: list[dict], peak, is_round: bool) -> list[str]:
    torch_rows = [r for r in rows if r["impl"].startswith("torch") and r["ms"] == r["ms"]]
    eager = {r["step"]: r["ms"] for r in torch_rows if r["mode"] == "eager-fp32"}
    fastest = {}
    for r in torch_rows:
        fastest[r["step"]] = min(fastest.get(r["step"], float("inf")), r["ms"])
    head = ROUND_COLUMNS if is_round else STEP_COLUMNS
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        note = f" {r['note']}" if r.get("note") else ""
        lines.append("| " + " | ".join(_cells(r, eager, fastest, peak, is_round)) + " |" + note)
    return lines


def report(rows: list[dict], flops_by_step: dict) -> str:
    kind = jax.devices()[0].device_kind
    peak = next((v for k, v in PEAKS.items() if k in kind), None)
    counts = ", ".join(f"{k} {v / 1e9:,.2f} GFLOP" for k, v in flops_by_step.items())
    peak_s = "unknown for this device"
    if peak:
        peak_s = f"{peak[0] / 1e12:.0f} (bf16) / {peak[1] / 1e12:.0f} (fp32 as TF32) TFLOP/s"
    lines = [
        f"device: {kind}",
        f"FLOPs (analytic, benchmarks/flops.py, 1 MAC = 2 FLOPs): {counts}",
        f"peak: {peak_s}",
    ]
    steps = [r for r in rows if r["step"] != "round"]
    rounds = [r for r in rows if r["step"] == "round"]
    if steps:
        lines += ["", *_table(steps, peak, False)]
    if rounds:
        lines += ["", "DFKD round (images: kept + KD):", *_table(rounds, peak, True)]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny models and batch (CPU check)")
    p.add_argument("--setting", default="", choices=("", *SETTINGS), help="a named setting")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--jax_dtypes", default="float32,bfloat16")
    p.add_argument(
        "--torch_modes",
        default="eager-fp32,bf16-compile",
        help="eager-fp32, bf16-eager, bf16-compile, each optionally +cl (channels-last); "
        "comma list; '' skips",
    )
    p.add_argument("--tables", default="steps", help="steps, round (comma list)")
    p.add_argument("--rounds", type=int, default=2, help="timed rounds after the first")
    p.add_argument(
        "--round_method",
        default="deepinversion",
        choices=sorted(SYNTHESIZERS),
        help="the round's synthesizer (the PyTorch side has DeepInversion only)",
    )
    p.add_argument("--round_synth_steps", type=int, default=40, help="NAYER's a round")
    p.add_argument("--round_kd_steps", type=int, default=100)
    p.add_argument("--bank_size", type=int, default=4096, help="memory bank (images)")
    p.add_argument("--out", default="")
    p.add_argument("--dump_hlo", default="", help="write each compiled stars_jax step here")
    p.add_argument(
        "--torch_timeout",
        type=float,
        default=300.0,
        help="seconds for each PyTorch mode, compilation included",
    )
    p.add_argument("--profile", default="", help="profile the JAX steps into this directory")
    p.add_argument("--profile_steps", type=int, default=5)
    p.add_argument("--top", type=int, default=25, help="kernels in each profile table")
    args = p.parse_args(argv)
    s = _setting(args.setting or args.tiny)
    dtypes = list(filter(None, args.jax_dtypes.split(",")))
    if args.profile:
        profile_jax(s, dtypes, args.profile, args.profile_steps, args.top)
        return []
    tables = [t for t in TABLES if t in args.tables.split(",")]
    r = dict(
        method=args.round_method,
        synth_steps=args.round_synth_steps,
        kd_steps=args.round_kd_steps,
        rounds=max(args.rounds, 1),
        bank_size=args.bank_size,
    )
    flops_by_step = analytic_flops(s, r if "round" in tables else None)
    spec = dict(setting=s, tables=tables, steps=args.steps, warmup=args.warmup, round=r)
    spec["norm"] = _norm(s)
    if args.round_method != "deepinversion":  # the PyTorch round is DeepInversion's
        spec["tables"] = [t for t in tables if t != "round"]
    rows = []
    for mode in filter(None, args.torch_modes.split(",")) if spec["tables"] else []:
        rows += bench_torch({**spec, "mode": mode}, args.torch_timeout)
    for dt in dtypes:
        if "steps" in tables:
            rows += bench_jax(s, dt, args.steps, args.warmup, args.dump_hlo)
        if "round" in tables:
            rows.append(bench_jax_round(s, dt, r))
    for row in rows:
        row["flops"] = flops_by_step[row["step"]]  # the same work on both sides
    table = report(rows, flops_by_step)
    print(f"setting: {s}\n{table}", flush=True)
    if args.out:
        out = {"setting": s, "flops": flops_by_step, "round": r, "rows": rows}
        Path(args.out).write_text(json.dumps(out, indent=2))
    return rows


if __name__ == "__main__":
    main()
