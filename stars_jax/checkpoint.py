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

from stars_jax.errors import UserError


class CheckpointWriteError(UserError, OSError):
    """A checkpoint that could not be written."""


def make_manager(directory, keep: int = 2) -> ocp.CheckpointManager:
    """A manager for ``directory`` (a local path or a gs:// bucket path)."""
    directory = epath.Path(directory)
    if not str(directory).startswith(("gs://", "s3://")):
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
    """Restores the newest checkpoint into the structure (and shardings) of ``target``."""
    step = manager.latest_step()
    if step is None:
        return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    return step, manager.restore(step, args=ocp.args.StandardRestore(abstract))
