"""Orbax checkpoints of everything a run needs to resume (never the fixed teacher).

Orbax writes each step into a temporary directory and renames it when complete, so a run
killed mid-save leaves the previous checkpoint intact; restoring picks the latest complete one.
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from stars_jax.errors import InputError, UserError
from stars_jax.paths import is_remote


class CheckpointWriteError(UserError, OSError):
    """A checkpoint that could not be written."""


def make_manager(directory, keep: int = 2) -> ocp.CheckpointManager:
    """A manager for ``directory`` (a local path or a gs:// bucket path)."""
    directory = epath.Path(directory)
    if not is_remote(directory):
        directory = directory.absolute()
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager(directory, options=options)


def save(manager: ocp.CheckpointManager, step: int, tree: Any) -> None:
    """Saves ``tree`` as ``step`` and blocks until it is committed to disk. A failed write
    (disk full, permissions) raises one ``CheckpointWriteError`` naming the cause; the
    previous checkpoint stays intact."""
    try:
        manager.save(step, args=ocp.args.StandardSave(tree), force=True)
        manager.wait_until_finished()
    except Exception as err:
        # Orbax's async writers would otherwise log their shutdown noise around the cause.
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        raise CheckpointWriteError(
            f"Could not write the checkpoint of round {step + 1} to {manager.directory}: "
            f"{type(err).__name__}: {err}. The previous checkpoint is intact; free space or "
            "fix permissions, then rerun the same command to resume."
        ) from err


def restore_latest(manager: ocp.CheckpointManager, target: Any) -> tuple[int, Any] | None:
    """Restores the newest readable checkpoint into the structure (and shardings) of
    ``target``. A newer one that cannot be read (a damaged file) is moved aside as
    ``STEP.unreadable`` with a warning naming it, and the next older one is tried; if none
    can be read, an ``InputError`` says which directory to remove."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    failed = []
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as err:  # orbax/tensorstore raise many types; KeyboardInterrupt passes
            failed.append((step, _first_line(err)))
            continue
        for path in set_aside(manager, {s for s, _ in failed}.__contains__, "unreadable"):
            print(
                f"Warning: a checkpoint cannot be read (a damaged file); moved it to {path} "
                f"and resumed from round {step + 1}'s, the newest readable one.",
                flush=True,
            )
        return step, restored
    if failed:
        raise InputError(_unreadable_message(manager.directory, failed))
    return None


def _first_line(err: Exception, limit: int = 160) -> str:
    text = (str(err).splitlines() or [type(err).__name__])[0]
    return text if len(text) <= limit else text[:limit] + "..."


def set_aside(manager: ocp.CheckpointManager, which, why: str) -> list[str]:
    """Renames the steps for which ``which(step)`` holds to ``STEP.<why>``, out of orbax's way
    (it ignores non-numeric names), so a resumed run starts before them and can write those
    steps again; the files stay for inspection. Returns the new paths."""
    moved = []
    for step in sorted(s for s in manager.all_steps() if which(s)):
        path = epath.Path(manager.directory) / str(step)
        path.rename(path.parent / f"{step}.{why}")
        moved.append(f"{path}.{why}")
    if moved:
        manager.reload()
    return moved


def _unreadable_message(directory, failed: list[tuple[int, str]]) -> str:
    lines = "\n".join(f"  round {s + 1} ({directory}/{s}): {why}" for s, why in failed)
    return (
        f"Cannot restore the checkpoints in {directory}: none can be read.\n{lines}\n"
        "Their structure or shapes differ from what this config builds (a changed config, "
        "or another stars_jax version), or they are damaged. Rerun with the config (and "
        f"version) that made them, or start the run afresh: delete {directory} or pass "
        "another --workdir."
    )


# A run's checkpoint: {"carry": the round carry as a plain tuple, "clock": the budget clock}.
# The carry (``distill.Carry``) is saved as a tuple so that its leaf paths are those of the
# checkpoints written before it was a named tuple.


def save_run(manager: ocp.CheckpointManager, step: int, carry: tuple, clock: dict) -> None:
    """Saves a run's ``carry`` and budget ``clock`` after round ``step`` (``save``)."""
    save(manager, step, {"carry": tuple(carry), "clock": clock})


def restore_run(manager: ocp.CheckpointManager, carry: tuple, clock: dict):
    """``(step, carry, clock)`` of the newest checkpoint, restored into the structure and
    shardings of ``carry`` (of its type) and ``clock``; None without a checkpoint."""
    restored = restore_latest(manager, {"carry": tuple(carry), "clock": clock})
    if restored is None:
        return None
    step, tree = restored
    return step, type(carry)(*tree["carry"]), tree["clock"]


def read_bank(directory) -> dict | None:
    """The memory bank of the newest checkpoint in ``directory`` as host arrays (the fields of
    ``bank.Bank``), without knowing the run's config; None without a checkpoint."""
    from stars_jax.distill import Carry  # the carry's field order

    directory = epath.Path(directory)
    if not directory.is_dir():
        return None
    manager = ocp.CheckpointManager(directory if is_remote(directory) else directory.absolute())
    step = manager.latest_step()
    if step is None:
        return None
    tree = manager.restore(step, args=ocp.args.StandardRestore())
    return Carry(*tree["carry"]).bank
