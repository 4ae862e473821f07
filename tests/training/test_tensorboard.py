"""TensorBoard event files and curves.png of a tiny run, read back without TensorBoard."""

import glob
import os
import struct

import pytest
from tensorboardX.proto import event_pb2

from deepfake_jax.training import curves, metric_writer


def read_scalars(workdir):
    """{tag: [(step, value), ...]} from every event file in `workdir` (TFRecord framing:
    length u64, its crc u32, the Event proto, its crc u32)."""
    out = {}
    for path in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))):
        with open(path, "rb") as f:
            data = f.read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def test_run_writes_event_files_and_curves(trained_workdir):
    workdir, summary = trained_workdir
    scalars = read_scalars(workdir)
    steps = summary["step"]
    loss = scalars["train/loss"]
    assert [s for s, _ in loss][-1] == steps and len(loss) >= 2
    lr = scalars["train/learning_rate"]
    assert len(lr) == len(loss) and max(v for _, v in lr) > 0
    assert [s for s, _ in scalars["val/val_roc_auc"]][-1] == steps
    auc = summary["eval"]["test"]["roc_auc"]
    assert scalars["final_test/roc_auc"] == [(steps, pytest.approx(auc, abs=1e-6))]
    assert "final_valid/accuracy" in scalars
    curves_png = os.path.join(workdir, curves.CURVES_NAME)
    assert os.path.getsize(curves_png) > 10_000  # a drawn PNG, not an empty figure


def test_writer_disabled_writes_nothing(tmp_path):
    writer = metric_writer.MetricWriter(str(tmp_path), enabled=False)
    writer.write(1, "train", {"loss": 1.0})
    writer.close()
    assert os.listdir(tmp_path) == []


def test_curves_need_metrics(tmp_path):
    assert curves.plot_training_curves(str(tmp_path)) is None
    writer = metric_writer.MetricWriter(str(tmp_path))
    for step in (1, 2, 3):
        writer.write(step, "train", {"loss": 1.0 / step, "learning_rate": 0.1 * step})
    writer.write(3, "val", {"val_roc_auc": 0.7, "val_log_loss": 2.5})
    writer.close()
    assert os.path.exists(tmp_path / curves.CURVES_NAME)
    assert read_scalars(str(tmp_path))["train/learning_rate"][-1] == (3, pytest.approx(0.3))
