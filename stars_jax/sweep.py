"""Ablation runner: every variant x seed as its own main job, then paired statistics.

  python -m stars_jax.sweep --config configs/default.py --workdir workdirs/sweep \
      --variant 'base:synth.l_rca=0,synth.l_tar=0,distill.b_rca=0' --variant stars: \
      --grid 'synth.rca_sign=-1,1' --seeds 0-7 --parallel 2 [--config.x=...]

Variants are the named ``--variant NAME:KEY=V,...`` sets (default: one, named ``run``) crossed
with every ``--grid KEY=V1,V2,...`` axis. Each run is ``python -m stars_jax.main`` in
``WORKDIR/runs/VARIANT/seedK`` with ``--config.seed=K``, the shared ``--config.*`` overrides and
the variant's own; a run whose ``summary.json`` exists is skipped and an interrupted one resumes
from its checkpoint, so rerunning the same command finishes a sweep. Runs start seed by seed,
the variants of one seed side by side, so that paired runs share the machine's load.

``sweep.json`` and ``sweep.md`` then give, per variant, mean, standard deviation and n of the
metric (``--metric``, a dotted path into summary.json) and the paired difference to the
reference variant (``--reference``, default the first) over the seeds both finished, with a
95 % Student-t confidence interval, the paired t-test's p-value, its Holm correction over the
sweep's comparisons and the minimum effect detectable at 80 % power (``stars_jax.stats``).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from absl import flags
from ml_collections import config_flags

from stars_jax import cli, errors, validate
from stars_jax.errors import ConfigError
from stars_jax.stats import holm, interval, min_detectable_effect, paired_p


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    overrides: tuple[tuple[str, str], ...]  # (config key, value as given on the command line)


def _split_values(text: str) -> list[str]:
    """'a,b,(1,2)' -> ['a', 'b', '(1,2)']: commas inside brackets or parentheses stay."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch in "([") - (ch in ")]")
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return out


def _check_key(key: str, where: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+", key):
        raise ValueError(f"{where}: {key!r} is not a config key like 'synth.l_rca'.")
    return key


def parse_grid(spec: str) -> tuple[str, list[str]]:
    """'synth.rca_sign=-1,1' -> ('synth.rca_sign', ['-1', '1'])."""
    key, sep, values = spec.partition("=")
    values = [v for v in _split_values(values) if v] if sep else []
    if not values:
        raise ValueError(f"--grid {spec!r}: expected KEY=V1,V2,... e.g. 'synth.l_tar=0,1'.")
    if len(set(values)) != len(values):
        raise ValueError(f"--grid {spec!r}: a value is repeated.")
    return _check_key(key.strip(), f"--grid {spec!r}"), values


def parse_variant(spec: str) -> Variant:
    """'base:synth.l_rca=0,distill.b_rca=0' -> Variant('base', ...); 'stars:' has no overrides."""
    name, sep, rest = spec.partition(":")
    if not sep or not re.fullmatch(r"[\w.+-]+", name):
        raise ValueError(
            f"--variant {spec!r}: expected NAME:KEY=V,KEY=V,... (NAME of letters, digits, "
            "'_.+-'; 'NAME:' for no overrides), e.g. 'base:synth.l_rca=0,synth.l_tar=0'."
        )
    overrides = []
    for item in _split_values(rest) if rest.strip() else []:
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"--variant {spec!r}: {item!r} is not KEY=VALUE.")
        overrides.append((_check_key(key.strip(), f"--variant {spec!r}"), value.strip()))
    return Variant(name, tuple(overrides))


def parse_seeds(spec: str) -> list[int]:
    """'0-7' -> 0..7; '0,3,5' -> [0, 3, 5]; '0-2,9' -> [0, 1, 2, 9]."""
    seeds = []
    try:
        for part in spec.split(","):
            lo, dash, hi = part.strip().partition("-")
            seeds += list(range(int(lo), int(hi) + 1)) if dash else [int(lo)]
    except ValueError:
        raise ValueError(f"--seeds {spec!r}: expected e.g. '0-7' or '0,3,5'.") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {spec!r}: no seeds, or a seed twice.")
    return seeds


def expand(variants: list[Variant], grids: list[tuple[str, list[str]]]) -> list[Variant]:
    """Named variants x the product of the grid axes; names say the grid values."""
    out = []
    for v in variants:
        for combo in itertools.product(*(values for _, values in grids)):
            assign = tuple((key, val) for (key, _), val in zip(grids, combo, strict=True))
            name = ",".join([v.name] * bool(v.name) + [f"{k}={x}" for k, x in assign])
            out.append(Variant(name or "run", v.overrides + assign))
    names = [v.name for v in out]
    if len(set(names)) != len(names):
        raise ValueError(f"Two variants share a name: {names}.")
    return out


def run_dir(workdir: Path, variant: Variant, seed: int) -> Path:
    slug = re.sub(r"[^\w.+=-]+", "_", variant.name)
    return workdir / "runs" / slug / f"seed{seed}"


def command(config: str, rdir: Path, seed: int, variant: Variant, shared: list[str], module):
    return [
        sys.executable,
        "-m",
        module,
        f"--config={config}",
        f"--workdir={rdir}",
        f"--config.seed={seed}",
        *shared,
        *(f"--config.{k}={v}" for k, v in variant.overrides),
    ]


def read_metric(summary: dict, path: str) -> float:
    value = summary
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(f"--metric {path!r}: summary.json has no {part!r} there.")
        value = value[part]
    return float(value)


def finished_metric(rdir: Path, metric: str) -> float | None:
    """The metric of a finished run (its summary.json), or None if it has not finished."""
    path = rdir / "summary.json"
    return read_metric(json.loads(path.read_text()), metric) if path.exists() else None


def summarize(results: dict[str, dict[int, float]], reference: str) -> list[dict]:
    """Per variant: n, mean, std and the paired difference to ``reference`` over shared seeds."""
    rows, ref = [], results.get(reference, {})
    for name, by_seed in results.items():
        x = np.array([by_seed[s] for s in sorted(by_seed)])
        row = {
            "variant": name,
            "n": len(x),
            "mean": float(x.mean()) if len(x) else None,
            "std": float(x.std(ddof=1)) if len(x) > 1 else None,
            "values": {str(s): by_seed[s] for s in sorted(by_seed)},
        }
        shared = sorted(set(by_seed) & set(ref))
        if name != reference and shared:
            d = np.array([by_seed[s] - ref[s] for s in shared])
            mean, lo, hi = interval(d)
            sd = float(d.std(ddof=1)) if len(d) > 1 else float("nan")
            row["paired"] = {
                "n": len(d),
                "mean": mean,
                "ci95": [lo, hi],
                "sd": sd,
                "p": paired_p(d),
                "mde80": min_detectable_effect(sd, len(d)),
                "wins": int((d > 0).sum()),
                "seeds": shared,
            }
        rows.append(row)
    paired = [r["paired"] for r in rows if "paired" in r]
    for p, adjusted in zip(paired, holm([p["p"] for p in paired]), strict=True):
        p["p_holm"] = adjusted
    return rows


def _fmt(x, digits=2):
    return "-" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def markdown(rows: list[dict], reference: str, metric: str, header: str) -> str:
    lines = [
        header,
        "",
        f"Metric `{metric}`; paired differences against `{reference}` over the "
        "seeds both finished, with 95 % Student-t intervals; p: the paired t-test's, Holm: "
        "Holm-corrected over this table's comparisons; MDE: the smallest true difference the "
        "test detects with 80 % power at the observed paired SD (alpha 0.05, two-sided).",
        "",
        "| variant | n | mean | std | paired diff | 95 % CI | p | Holm | MDE | wins |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        p = r.get("paired")
        if p:
            diff = (
                _fmt(p["mean"]),
                f"[{_fmt(p['ci95'][0])}, {_fmt(p['ci95'][1])}]",
                _fmt(p["p"], 3),
                _fmt(p["p_holm"], 3),
                _fmt(p["mde80"]),
                f"{p['wins']}/{p['n']}",
            )
        else:
            first = "(reference)" if r["variant"] == reference else "no shared seeds"
            diff = (first, "", "", "", "", "")
        lines.append(
            f"| {r['variant']} | {r['n']} | {_fmt(r['mean'])} | {_fmt(r['std'])} | "
            f"{' | '.join(diff)} |"
        )
    return "\n".join(lines) + "\n"


def _run_one(job):
    """Runs one main job (its output to log.txt beside it); returns (rc, seconds)."""
    rdir, cmd, env = job
    rdir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(rdir / "log.txt", "a") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    return rc, time.time() - start


def _plan(args) -> tuple[list[Variant], list[int], str]:
    """The variants, seeds and reference variant the arguments name, checked."""
    variants = expand(
        [parse_variant(s) for s in args.variant] or [Variant("", ())],
        [parse_grid(s) for s in args.grid],
    )
    seeds = parse_seeds(args.seeds)
    reference = args.reference or variants[0].name
    if reference not in {v.name for v in variants}:
        raise ValueError(
            f"--reference {reference!r} is not a variant; variants: {[v.name for v in variants]}."
        )
    if args.parallel < 1:
        raise ValueError(f"--parallel {args.parallel}: must be >= 1.")
    return variants, seeds, reference


def _pending(args, shared, workdir, variants, seeds) -> tuple[list, int]:
    """``(jobs, done)``: a ``(variant, seed, (rdir, cmd, env))`` per unfinished run, seed-major
    (a seed's variants run side by side: paired load), and the count of finished ones."""
    env = dict(os.environ)
    if args.parallel > 1:  # GPU runs share the card; the fraction is ignored on CPU.
        env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{0.9 / args.parallel:.2f}")
    jobs, done = [], 0
    for seed in seeds:
        for v in variants:
            rdir = run_dir(workdir, v, seed)
            if (rdir / "summary.json").exists():
                done += 1
            else:
                cmd = command(args.config, rdir, seed, v, shared, args.module)
                jobs.append((v, seed, (rdir, cmd, env)))
    return jobs, done


def _run_jobs(jobs, parallel: int, metric: str, done: int, total: int) -> list[str]:
    """Runs the jobs ``parallel`` at a time, reporting each as it finishes; returns the run
    directories that failed."""
    failed = []
    with ThreadPoolExecutor(parallel) as pool:
        futures = {pool.submit(_run_one, job): (v, s, job[0]) for v, s, job in jobs}
        for i, fut in enumerate(as_completed(futures), 1):
            (v, s, rdir), (rc, secs) = futures[fut], fut.result()
            status = "ok" if rc == 0 else f"FAILED (exit {rc}; see {rdir / 'log.txt'})"
            if rc:
                failed.append(str(rdir))
            elif (value := finished_metric(rdir, metric)) is not None:
                status = f"{metric} {value:.2f}"
            print(f"[{done + i}/{total}] {v.name} seed {s}: {status} ({secs:.0f} s)", flush=True)
    return failed


def _collect(workdir, variants, seeds, metric: str) -> dict[str, dict[int, float]]:
    """The metric of every finished run, by variant name and seed."""
    results = {v.name: {} for v in variants}
    for v in variants:
        for s in seeds:
            if (value := finished_metric(run_dir(workdir, v, s), metric)) is not None:
                results[v.name][s] = value
    return results


def _write_report(args, shared, workdir, variants, seeds, reference, failed, results) -> str:
    """Writes sweep.json and sweep.md; returns the markdown."""
    rows = summarize(results, reference)
    record = {
        "config": args.config,
        "overrides": shared,
        "metric": args.metric,
        "reference": reference,
        "seeds": seeds,
        "failed": failed,
        "variants": [{"name": v.name, "overrides": dict(v.overrides)} for v in variants],
        "results": rows,
    }
    (workdir / "sweep.json").write_text(json.dumps(record, indent=2) + "\n")
    header = f"# Sweep `{args.config}` {' '.join(shared)}".rstrip()
    table = markdown(rows, reference, args.metric, header)
    if failed:
        table += f"\nFailed runs (rerun the same command to retry): {', '.join(failed)}\n"
    (workdir / "sweep.md").write_text(table)
    return table


def run_sweep(args, shared: list[str]) -> int:
    workdir = Path(args.workdir)
    variants, seeds, reference = _plan(args)
    jobs, done = _pending(args, shared, workdir, variants, seeds)
    total = len(variants) * len(seeds)
    print(
        f"Sweep: {len(variants)} variant(s) x {len(seeds)} seed(s) = {total} runs, "
        f"{done} already finished, {len(jobs)} to run, {args.parallel} at a time, in "
        f"{workdir / 'runs'}.",
        flush=True,
    )
    failed = _run_jobs(jobs, args.parallel, args.metric, done, total)
    results = _collect(workdir, variants, seeds, args.metric)
    table = _write_report(args, shared, workdir, variants, seeds, reference, failed, results)
    print(table, flush=True)
    return 1 if failed else 0


PROG = "python -m stars_jax.sweep"
USAGE = (
    f"{PROG} --config FILE[:ARG] --workdir DIR [--variant NAME:KEY=V,...] "
    "[--grid KEY=V1,V2,...] [--seeds 0-7] [--parallel N] [--config.KEY=VALUE ...]"
)


def define_flags(fv: flags.FlagValues) -> None:
    def define(kind, name, default, help_):
        getattr(flags, f"DEFINE_{kind}")(name, default, help_, flag_values=fv)

    define("string", "config", None, "Config file, e.g. configs/default.py[:ARG].")
    define("string", "workdir", None, "Sweep directory (runs/, sweep.json, sweep.md).")
    define("multi_string", "variant", [], "NAME:KEY=V,KEY=V,... (repeatable).")
    define("multi_string", "grid", [], "KEY=V1,V2,... (repeatable; the axes are crossed).")
    define("string", "seeds", "0-7", "e.g. '0-7' or '0,3,5'.")
    define("integer", "parallel", 1, "Runs at a time.")
    define("string", "reference", "", "Variant to pair against (default: the first).")
    define("string", "metric", "student.top1", "Dotted path into summary.json.")
    define("string", "module", "stars_jax.main", "The job each run is (tests use a fake).")
    define("bool", "debug", False, cli.DEBUG_HELP)
    flags.mark_flags_as_required(["config", "workdir"], flag_values=fv)


def parse_args(argv: list[str]):
    """``(flags, shared)``: the sweep's own flags and the ``--config.KEY=VALUE`` overrides
    that pass through to every run. A bad command line raises ``ConfigError``."""
    argv = list(argv)
    loose = [a for a in argv if a.startswith("--config.") and "=" not in a]
    if loose:
        raise ConfigError(
            f"{loose[0]}: write overrides as --config.KEY=VALUE (one argument), as the "
            "sweep passes them through to every run."
        )
    shared = [a for a in argv if a.startswith("--config.")]
    own = [a for a in argv if not a.startswith("--config.")]
    return cli.parse(define_flags, own, PROG), shared


def check_runs_config(args, shared: list[str], variants: list[Variant]) -> None:
    """Each variant's config as its runs will load it (file, shared and own overrides),
    checked once before the first run starts: a bad key or value is one error now, not a
    failure in every run."""
    flag = cli.with_installed_configs([f"--config={args.config}"])  # as main looks it up
    cli.check_config_path(flag)
    config = flag[0].split("=", 1)[1]
    for v in variants:
        over = [*shared, *(f"--config.{k}={x}" for k, x in v.overrides)]
        argv = [PROG, f"--config={config}", *over]
        fv = flags.FlagValues()  # the overrides are read from sys_argv when the file loads
        config_flags.DEFINE_config_file("config", None, "", flag_values=fv, sys_argv=argv)
        try:
            fv(argv)
        except Exception as err:  # flags.Error, and what ml_collections raises for a bad key
            raise ConfigError(f"Variant {v.name!r}: {cli.flag_error_message(argv, err)}") from err
        try:
            validate.check_config(fv.config)
        except ConfigError as err:
            raise ConfigError(f"Variant {v.name!r}: {err}") from err


def _fail(err: Exception, debug: bool, usage=False) -> int:
    if debug:
        raise err
    print(f"{PROG}: {err}", file=sys.stderr)
    if usage:
        print(f"Usage: {USAGE}  (--helpfull lists every flag)", file=sys.stderr)
    return 2


def _help() -> int:
    fv = flags.FlagValues()
    define_flags(fv)
    print(f"{__doc__.split(chr(10) * 2)[0]}\n\nUsage: {USAGE}\n\n{fv.get_help()}")
    print("Every --config.KEY=VALUE is passed to all runs.")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if {"--help", "-h", "--helpfull"} & set(argv):
        return _help()
    debug = errors.debug_requested(argv)
    try:
        args, shared = parse_args(argv)
    except ConfigError as e:
        return _fail(e, debug, usage=True)
    try:
        if args.module == "stars_jax.main":  # a fake job (tests) reads no config
            check_runs_config(args, shared, _plan(args)[0])
        return run_sweep(args, shared)
    except (ConfigError, ValueError, KeyError) as e:
        return _fail(e, debug)


if __name__ == "__main__":
    sys.exit(main())
