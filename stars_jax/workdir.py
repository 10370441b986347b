"""What keeps a workdir whole: one job at a time, and one run's config per set of checkpoints.

- ``lock``: an advisory lock file (``WORKDIR/.lock``: host, pid, start time). A second job
  on the same workdir stops with a message naming the holder; a lock left by a process that
  no longer runs on this host (killed, crashed) is stale and taken over.
- The run fingerprint (``WORKDIR/fingerprint.json``): the config keys that define a run, all
  but ``SAFE_KEYS``, written with the first start. A rerun whose fingerprint differs stops
  before any work and lists the differing keys. Only the section of ``synth.method`` is in it
  (the other methods' sections do not define the run); a fingerprint of the flat synth layout
  (before the per-method sections) is read in today's keys (``from_flat_layout``).
- ``config.json`` (the resolved config, versions, devices) is written once the config is
  valid and the checkpoint restored; ``config_history.jsonl`` gets one line per start.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time

from stars_jax import metrics as metrics_lib
from stars_jax.config import METHODS, old_key_path
from stars_jax.errors import DiskFullError, WorkdirError, disk_full_message, is_disk_full
from stars_jax.paths import is_remote
from stars_jax.validate import flatten

Path = metrics_lib.Path

# Keys a resumed run may change: they set the budget, evaluation and logging cadence, paths,
# the device layout and what is reported, not what the run computes.
SAFE_KEYS = frozenset(
    {
        "distill.rounds",
        "distill.time_budget_s",
        "distill.eval_every",
        "data.eval_batch_size",
        "data.eval_limit",
        "data.path",
        "data.cache_dir",
        "teacher.cache_dir",
        "ckpt.every",
        "ckpt.keep",
        "log.every",
        "log.grid_images",
        "log.grad_ratio_every",
        "log.tensorboard",
        "energy.enabled",
        "energy.pj_per_ac",
        "energy.pj_per_mac",
        "mesh.data",
    }
)
LOCK = ".lock"
FINGERPRINT = "fingerprint.json"


def fingerprint(config) -> dict:
    """The keys that define a run, with their values (JSON-normalised)."""
    flat = flatten(config.to_dict() if hasattr(config, "to_dict") else config)
    other = tuple(f"synth.{m}." for m in METHODS if m != flat.get("synth.method"))
    keep = {k: v for k, v in sorted(flat.items()) if k not in SAFE_KEYS and not k.startswith(other)}
    return json.loads(json.dumps(keep))


def from_flat_layout(stored: dict) -> dict:
    """A stored fingerprint in today's keys: one of the flat synth layout has its method's
    settings moved to ``synth.<method>.*`` and the other methods' dropped (they did not
    define the run); one of today's layout comes back as it is."""
    method = stored.get("synth.method")
    out = {}
    for key, value in stored.items():
        new = old_key_path(key, method)
        if new == key or new.startswith(f"synth.{method}."):
            out[new] = value
    return out


def differences(stored: dict, now: dict) -> dict:
    """``{key: (stored value, value now)}`` for every key both have that differs. Keys only
    one side has come from another stars_jax version (a key added with a default that keeps
    the old behaviour, or one removed): an upgrade alone does not stop a resume."""
    return {
        k: (stored[k], now[k]) for k in sorted(stored.keys() & now.keys()) if stored[k] != now[k]
    }


def has_checkpoints(workdir: Path) -> bool:
    ckpt = Path(workdir) / "checkpoints"
    return ckpt.exists() and any(p.name.isdigit() for p in ckpt.iterdir())


def check_fingerprint(workdir: Path, config, allow: tuple[str, ...] = ()) -> None:
    """Stops, before any work, a rerun into a workdir whose checkpoints another config made.
    Keys in ``allow`` may differ (the user said the change is intended)."""
    path = Path(workdir) / FINGERPRINT
    if not (path.exists() and has_checkpoints(workdir)):
        return
    stored = json.loads(path.read_text())
    upgraded = from_flat_layout(stored)
    diff = differences(upgraded, fingerprint(config))
    refused = {k: v for k, v in diff.items() if k not in allow}
    if not refused:
        return
    lines = "\n".join(f"  {k}: {a!r} in the run, {b!r} now" for k, (a, b) in refused.items())
    if upgraded.keys() != stored.keys():
        lines += "\n  (the run's keys of the flat synth layout are named as they are today)"
    raise WorkdirError(
        f"{workdir} holds checkpoints of a run made with another config:\n{lines}\n"
        "To start a new run, pass another --workdir. To continue this run, rerun with its "
        "values, or, if the change is intended and safe for the checkpoints, add "
        f"--allow_config_change={','.join(refused)} (keys that change what is saved, such as "
        "student.arch or distill.bank_size, cannot be resumed; safe to change on any resume: "
        f"{', '.join(sorted(SAFE_KEYS))})."
    )


def record_start(workdir: Path, config, info: dict, resumed_after: int | None) -> None:
    """Writes ``config.json`` and the fingerprint, and appends this start to the history."""
    workdir = Path(workdir)
    metrics_lib.write_json(workdir / "config.json", {"config": config.to_dict(), **info})
    metrics_lib.write_json(workdir / FINGERPRINT, fingerprint(config))
    line = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "resumed_after_round": resumed_after,
        "host": socket.gethostname(),
        "config": config.to_dict(),
    }
    with (workdir / "config_history.jsonl").open("a") as f:
        f.write(json.dumps(line, default=str) + "\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _take(path: Path) -> bool:
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
    try:
        fd = os.open(str(path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    # (A full disk here is an OSError naming the path: errors.report_user_errors words it.)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(holder, f)
    except OSError as err:  # a lock we could not finish writing must not block later runs
        path.unlink(missing_ok=True)
        if is_disk_full(err):
            raise DiskFullError(disk_full_message(path, err)) from err
        raise
    return True


def _stale(holder: dict) -> bool:
    """A lock nobody holds: unreadable or empty (its writer died mid-write), or left by a
    process of this host that no longer runs."""
    if not holder.get("pid"):
        return True
    return holder.get("host") == socket.gethostname() and not _alive(int(holder["pid"]))


@contextlib.contextmanager
def lock(workdir: Path, enabled: bool = True):
    """Holds ``WORKDIR/.lock`` for the job's life (local workdirs; object stores have no
    atomic create, so gs:// and s3:// workdirs are not locked)."""
    workdir = Path(workdir)
    if not enabled or is_remote(workdir):
        yield
        return
    path = workdir / LOCK
    if not _take(path):
        try:
            holder = json.loads(path.read_text())
        except (OSError, ValueError):
            holder = {}
        holder = holder if isinstance(holder, dict) else {}
        if _stale(holder):
            who = f"of process {holder['pid']} (no longer running)" if holder else "(empty)"
            print(f"Removing a stale lock {who}: {path}.")
            path.unlink(missing_ok=True)
        if not _take(path):
            since = time.strftime("%Y-%m-%d %H:%M", time.localtime(holder.get("since", 0)))
            raise WorkdirError(
                f"{workdir} is in use by process {holder.get('pid', '?')} on host "
                f"{holder.get('host', '?')} (since {since}). Wait for that job to end or use "
                f"another --workdir; if no job runs there any more, delete {path}."
            )
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
