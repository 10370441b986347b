"""What a run accumulates over its rounds beside the checkpointed carry, and the guard that
stops a run whose losses explode.

``run_state.json`` (written atomically into each checkpoint's directory after the save)
keeps the kept batches' health of every student round, the seconds spent per part of the job
and the divergence guard's reference losses, so that a resumed run's summary covers the whole
run, not only its last segment.

The guard: a loss that stays finite but explodes (``distill.lr=1e6`` drives the KD loss from
0.008 to 1.2e6, and the student to chance) stops the run as a NaN does. Its reference is each
watched loss's value in the first student round (the student is at its least trained); a
later value beyond ``EXPLOSION`` times ``max(|reference|, 1)`` has diverged (the floor keeps a
loss that starts near 0 from tripping it on ordinary growth).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from stars_jax import metrics as metrics_lib
from stars_jax.errors import DivergedError

FILE = "run_state.json"
WATCHED = ("kd/loss", "synth/loss")
EXPLOSION = 1e3


@dataclasses.dataclass
class RunState:
    health: list = dataclasses.field(default_factory=list)  # per student round
    spent: dict = dataclasses.field(default_factory=dict)  # seconds per part of the job
    reference: dict = dataclasses.field(default_factory=dict)  # loss -> first student round's
    # synth.stars_weights=ratio: the calibrated raw weights (stars_jax.calibration); {} before
    stars_weights: dict = dataclasses.field(default_factory=dict)


def save(ckpt_dir, state: RunState, step: int) -> None:
    """Writes ``state`` into the directory of the checkpoint of round ``step`` (so it goes
    where that checkpoint goes: kept, pruned or set aside with it)."""
    metrics_lib.write_json(metrics_lib.Path(ckpt_dir) / str(step) / FILE, vars(state))


def load(ckpt_dir, step: int | None) -> RunState:
    """The state saved with the checkpoint of round ``step`` (None: a fresh run). Without one
    (a checkpoint from before this file existed, or a job killed between the two writes) the
    state starts empty, with a warning that the summary's means then miss earlier rounds."""
    if step is None:
        return RunState()
    path = metrics_lib.Path(ckpt_dir) / str(step) / FILE
    if not path.exists():
        print(
            f"Warning: no {FILE} beside the checkpoint of round {step + 1}; the summary's "
            "synthesis-health means and time breakdown will miss the rounds before it.",
            flush=True,
        )
        return RunState()
    return RunState(**json.loads(path.read_text()))


def check_divergence(reference: dict, metrics: dict, round_: int) -> None:
    """Records each watched loss's first student-round value in ``reference`` (in place), then
    raises ``DivergedError`` naming the loss and the round if one explodes past it."""
    for key in WATCHED:
        if key not in metrics:
            continue
        value = float(np.mean(metrics[key]))
        first = reference.setdefault(key, value)
        limit = EXPLOSION * max(abs(first), 1.0)
        if abs(value) > limit:
            raise DivergedError(
                f"{key} diverged in round {round_ + 1}: {value:.3g}, beyond {limit:.3g} "
                f"({EXPLOSION:.0f} x its first student round's {first:.3g}, or 1).",
                (key,),
            )
