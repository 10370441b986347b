"""TensorBoard event files from the metrics writer, read back record by record."""

import json
import struct
import time

import numpy as np
import pytest

from stars_jax import metrics

event_pb2 = pytest.importorskip(
    "tensorboardX.proto.event_pb2", reason='TensorBoard events need tensorboardX (".[test]")'
)


def read_events(logdir):
    """Every Event in the logdir's event files (TFRecord framing: length, crc, data, crc)."""
    events = []
    for path in sorted(logdir.glob("**/events.out.tfevents.*")):
        data = path.read_bytes()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i : i + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[i + 12 : i + 12 + n])
            events.append(event)
            i += 12 + n + 4
    return events


def test_scalars_images_histograms_and_hparams_read_back(tmp_path, capsys):
    w = metrics.Writer(tmp_path, total_rounds=3, tensorboard=True)
    for r in range(3):
        w.write(r, {"kd/loss": 1.0 / (r + 1), "synth/bn": np.float32(2.0)})
    w.image(2, "synthetic", np.zeros((10, 12, 3), np.uint8))
    w.histogram(2, "eval/firing_rates", [0.1, 0.2, 0.3])
    w.hparams({"distill.lr": 0.01, "synth.tar_k": (1.0,)}, {"student_top1": 42.0})
    w.close()
    events = read_events(tmp_path)
    scalars = {
        (v.tag, e.step): v.simple_value
        for e in events
        if e.HasField("summary")
        for v in e.summary.value
        if v.HasField("simple_value")
    }
    assert scalars[("kd/loss", 1)] == pytest.approx(1.0)  # rounds are 1-based steps
    assert scalars[("kd/loss", 3)] == pytest.approx(1 / 3)
    assert scalars[("synth/bn", 2)] == pytest.approx(2.0)
    tags = {v.tag for e in events if e.HasField("summary") for v in e.summary.value}
    assert {"synthetic", "eval/firing_rates"} <= tags
    image = next(v.image for e in events for v in e.summary.value if v.tag == "synthetic")
    assert (image.height, image.width) == (10, 12)
    histo = next(v.histo for e in events for v in e.summary.value if v.tag == "eval/firing_rates")
    assert histo.num == 3 and histo.sum == pytest.approx(0.6)
    plugins = {v.metadata.plugin_data.plugin_name for e in events for v in e.summary.value}
    assert "hparams" in plugins
    # metrics.jsonl is written as before, beside the events.
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3


def test_disabled_writer_writes_no_events(tmp_path):
    w = metrics.Writer(tmp_path, total_rounds=1, enabled=False, tensorboard=True)
    w.write(0, {"kd/loss": 1.0})
    w.close()
    assert not list(tmp_path.iterdir())


def test_resume_forgets_the_rounds_after_the_checkpoint(tmp_path):
    """A run killed after logging rounds 1-3 (0-based 0-2) resumes at round 2: metrics.jsonl
    keeps rounds 0-1 and the new round 2; TensorBoard gets a purge marker at step 3."""
    w = metrics.Writer(tmp_path, total_rounds=3, tensorboard=True)
    for r in range(3):
        w.write(r, {"kd/loss": 1.0})
    w.close()
    time.sleep(1.1)  # event file names hold whole seconds: a same-second restart would reuse one
    w = metrics.Writer(tmp_path, total_rounds=3, start_round=2, tensorboard=True)
    w.write(2, {"kd/loss": 0.5})
    w.close()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(x["round"], x["kd/loss"]) for x in lines] == [(0, 1.0), (1, 1.0), (2, 0.5)]
    starts = [e.step for e in read_events(tmp_path) if e.HasField("session_log")]
    assert starts == [1, 3]  # each run marks where it starts; TensorBoard hides steps >= 3
