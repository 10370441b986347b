"""Run outputs: console progress with ETA, JSON-lines metrics, image grids, summaries."""

from __future__ import annotations

import json
import math
import time

import numpy as np
from etils import epath

from stars_jax.paths import is_remote

# Workdirs may be local paths or cloud buckets (gs://...): epath handles both.
Path = epath.Path


def _fmt_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class Writer:
    """Appends metrics to ``metrics.jsonl``, prints one console line per logged round and,
    with ``tensorboard``, writes the same scalars, image grids and histograms as TensorBoard
    event files into the workdir (``tensorboard --logdir WORKDIR``; needs the light
    ``tensorboardX`` package: ``pip install -e ".[tensorboard]"``, no TensorFlow).

    Only the writing process (process 0) should own a Writer with ``enabled=True``. Rounds are
    TensorBoard steps, 1-based as on the console.
    """

    def __init__(
        self,
        workdir: str | Path,
        total_rounds: int,
        start_round: int = 0,
        enabled: bool = True,
        tensorboard=False,
    ):
        """``start_round``: the first round this run logs. On a resume, what a killed run
        logged from that round on (after its last checkpoint) is forgotten, in
        ``metrics.jsonl`` and in TensorBoard (its events from those steps are purged)."""
        self.workdir = Path(workdir)
        self.path = self.workdir / "metrics.jsonl"
        self.total = total_rounds
        self.enabled = enabled
        self.t0 = time.time()
        self.first_round: int | None = None
        self.tb = None
        if not enabled:
            return
        if self.path.exists():
            lines = self.path.read_text().splitlines()
            kept = [x for x in lines if x and json.loads(x)["round"] < start_round]
            self.path.write_text("".join(x + "\n" for x in kept))
        if tensorboard:
            self.tb = _tensorboard(self.workdir, purge_step=start_round + 1)

    def image(self, round_: int, tag: str, grid: np.ndarray) -> None:
        if self.tb is not None:
            self.tb.add_image(tag, grid, round_ + 1, dataformats="HWC")

    def histogram(self, round_: int, tag: str, values) -> None:
        if self.tb is not None:
            self.tb.add_histogram(tag, np.asarray(values, np.float64), round_ + 1)

    def hparams(self, config: dict, results: dict) -> None:
        """The run's hyperparameters (flat ``section.key``) beside its final results."""
        if self.tb is None:
            return
        clean = lambda v: v if isinstance(v, (int, float, str, bool)) else str(v)
        self.tb.add_hparams(
            {k: clean(v) for k, v in config.items()},
            {k: float(v) for k, v in results.items()},
            name="hparams",
        )

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()

    def write(self, round_: int, metrics: dict, console_keys=None) -> None:
        if not self.enabled:
            return
        now = time.time()
        if self.first_round is None:
            self.first_round, self.t0 = round_, now
        record = {"round": round_, "time": round(now, 3)}
        record.update({k: float(v) if np.ndim(v) == 0 else v for k, v in metrics.items()})
        _append(self.path, json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k not in ("round", "time") and np.ndim(v) == 0:
                    self.tb.add_scalar(k, v, round_ + 1)
        done = round_ + 1 - self.first_round
        rate = (now - self.t0) / max(done - 1, 1) if done > 1 else math.nan
        eta = "?" if math.isnan(rate) else _fmt_seconds(rate * (self.total - round_ - 1))
        keys = console_keys or sorted(metrics)
        shown = " ".join(f"{k}={_fmt(record[k])}" for k in keys if k in record)
        speed = "" if math.isnan(rate) else f"{rate:.2f}s/round "
        print(f"[{round_ + 1}/{self.total}] {speed}ETA {eta} | {shown}", flush=True)


def _tensorboard(workdir: Path, purge_step: int):
    """A tensorboardX SummaryWriter on the workdir, or None (with a note) where none can be."""
    if is_remote(workdir):
        print("TensorBoard events are written for local workdirs only.", flush=True)
        return None
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        print(
            'TensorBoard events need tensorboardX: pip install -e ".[tensorboard]" '
            "(or set --config.log.tensorboard=False).",
            flush=True,
        )
        return None
    return SummaryWriter(str(workdir), purge_step=purge_step, flush_secs=30)


def _append(path, text: str) -> None:
    if is_remote(path):  # Object stores cannot append: rewrite.
        text = (path.read_text() if path.exists() else "") + text
        path.write_text(text)
    else:
        with path.open("a") as f:
            f.write(text)


def save_image_grid(
    path: str | Path, images_u8: np.ndarray, labels=None, preds=None, ncol: int = 8
) -> np.ndarray:
    """Writes ``[N, H, W, C]`` uint8 images as one PNG grid (C = 1 or 3).

    With ``labels`` the tiles are sorted by label and captioned ``label>pred`` when ``preds``
    (the teacher's classes) are given too: green where they agree, red where they do not.
    Small images are enlarged so that the caption stays readable. Returns the grid as an
    ``[H, W, 3]`` uint8 array.
    """
    from PIL import Image, ImageDraw

    images = np.asarray(images_u8)
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    n, h, w, _ = images.shape
    cap = 0
    if labels is not None:
        labels = np.asarray(labels)
        order = np.argsort(labels, kind="stable")
        images, labels = images[order], labels[order]
        preds = None if preds is None else np.asarray(preds)[order]
        scale = max(1, 64 // max(h, w))
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
        h, w, cap = h * scale, w * scale, 12
    nrow = math.ceil(n / ncol)
    grid = np.zeros((nrow * (h + cap + 2), ncol * (w + 2), 3), np.uint8)
    for i, img in enumerate(images):
        r, q = divmod(i, ncol)
        y, x = r * (h + cap + 2) + 1, q * (w + 2) + 1
        grid[y : y + h, x : x + w] = img
    picture = Image.fromarray(grid)
    if labels is not None:
        draw = ImageDraw.Draw(picture)
        for i, y_i in enumerate(labels):
            r, q = divmod(i, ncol)
            text = str(int(y_i)) if preds is None else f"{int(y_i)}>{int(preds[i])}"
            ok = preds is None or preds[i] == y_i
            colour = (120, 230, 120) if ok else (255, 90, 90)
            draw.text((q * (w + 2) + 2, r * (h + cap + 2) + h), text, fill=colour)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        picture.save(f, format="PNG")
    return np.asarray(picture)


def write_json(path: str | Path, obj: dict) -> None:
    """Writes JSON atomically (temp file, then rename)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)  # atomic, and overwrites (rename would refuse an existing file)
