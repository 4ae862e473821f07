"""Video-frame datasets: the `videos` layout, splits by video group, report, k-fold, and
video-level scores. Generated frame folders only."""

import csv
import json
import os

import cv2
import numpy as np
import pytest

from data_prep import convert, folds, layouts
from deepfake_jax import tasks
from deepfake_jax.evaluation import video_metrics


def write_frame(path, seed, size=32):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 256, (size, size, 3), np.uint8)
    cv2.imwrite(str(path), img)


def make_videos(root, n_videos=20, frames=3, split=None):
    """real/<v>/<f>.jpg and fake/<v>/<f>.jpg: fake video v is the swap of real video v."""
    base = os.path.join(root, split) if split else root
    for cls in ("real", "fake"):
        for v in range(n_videos):
            for f in range(frames):
                write_frame(os.path.join(base, cls, f"{v:03d}", f"{f:04d}.jpg"),
                            hash((cls, v, f)) % 2**32)
    return root


def read_index(out):
    with open(os.path.join(out, "records.csv")) as f:
        return list(csv.DictReader(f))


def test_video_groups_join_shared_sources():
    groups = layouts.video_groups(["000", "003", "000_003", "005", "007_005", "id0_0001"])
    assert groups["000"] == groups["003"] == groups["000_003"] == "000"
    assert groups["005"] == groups["007_005"] == "005"
    assert groups["id0_0001"] == "id0_0001"  # not all digits: its own group


def test_convert_splits_by_video_group(tmp_path):
    src = make_videos(str(tmp_path / "frames"))
    assert layouts.detect_layout(src) == "videos"
    out = str(tmp_path / "ar")
    manifest = convert.convert(src, out, split_ratios="0.6,0.2,0.2", show_progress=False)
    assert manifest["layout"] == "videos"
    rows = read_index(out)
    assert len(rows) == 120
    split_of_group = {}
    for r in rows:
        meta = json.loads(r["meta"])
        cls, video = meta["video"].split("/")
        assert r["path"].startswith(f"{cls}/{video}/") and meta["group"] == video
        split_of_group.setdefault(meta["group"], set()).add(r["split"])
    # every frame of a video, and the real + fake videos of one number, on one side
    assert all(len(s) == 1 for s in split_of_group.values())
    assert {next(iter(s)) for s in split_of_group.values()} == {"train", "valid", "test"}
    with open(os.path.join(out, "report.json")) as f:
        videos = json.load(f)["videos"]
    assert videos["num_videos"] == 40 and videos["num_frames"] == 120
    assert videos["groups_across_splits"]["count"] == 0
    assert sum(s["videos"]["fake"] for s in videos["per_split"].values()) == 20
    assert videos["per_split"]["test"]["frames"] == {"real": 12, "fake": 12}
    assert "## Videos" in open(os.path.join(out, "report.md")).read()
    # seeded: the same split again, another seed another split
    again = layouts.parse_dataset(src, split_ratios="0.6,0.2,0.2", split_seed=0)
    other = layouts.parse_dataset(src, split_ratios="0.6,0.2,0.2", split_seed=1)
    assert {s.rel_path: s.split for s in again.samples} == {r["path"]: r["split"] for r in rows}
    assert {s.rel_path: s.split for s in other.samples} != {r["path"]: r["split"] for r in rows}


def test_faceforensics_tree_groups_fakes_with_both_sources(tmp_path):
    src = tmp_path / "ffpp"
    for video in ("000", "003", "005", "007"):
        write_frame(src / "original_sequences/youtube/c23/frames" / video / "0000.png", 1)
    for method in ("Deepfakes", "FaceSwap"):
        for video in ("000_003", "005_007"):
            write_frame(src / "manipulated_sequences" / method / "c23/frames" / video / "0000.png",
                        2)
    parsed = layouts.parse_dataset(str(src), split_ratios="0.5,0.5")
    assert parsed.layout == "videos"
    groups = {s.rel_path: s.meta["group"] for s in parsed.samples}
    assert groups["manipulated_sequences/FaceSwap/c23/frames/000_003/0000.png"] == "000"
    assert groups["original_sequences/youtube/c23/frames/003/0000.png"] == "000"
    assert set(groups.values()) == {"000", "005"}
    assert len({(s.meta["group"], s.split) for s in parsed.samples}) == 2  # one split a group
    fake = next(s for s in parsed.samples if "Deepfakes/c23/frames/005_007" in s.rel_path)
    assert fake.label == 1
    assert fake.meta["video"] == "manipulated_sequences/Deepfakes/c23/frames/005_007"


def test_official_split_that_leaks_a_video_is_reported(tmp_path):
    src = str(tmp_path / "frames")
    make_videos(src, n_videos=3, frames=2, split="train")
    make_videos(src, n_videos=2, frames=2, split="test")  # videos 000, 001 again: a leak
    out = str(tmp_path / "ar")
    convert.convert(src, out, layout="videos", show_progress=False)
    with open(os.path.join(out, "report.json")) as f:
        rep = json.load(f)
    assert rep["videos"]["groups_across_splits"]["count"] == 2
    assert any("video group(s) have frames in more than one split" in w
               for w in rep["warnings"])


def test_frames_outside_a_video_folder_are_refused(tmp_path):
    src = make_videos(str(tmp_path / "frames"), n_videos=2, frames=1)
    write_frame(os.path.join(src, "fake", "loose.jpg"), 1)
    with pytest.raises(layouts.LayoutError, match="does not look like layout 'videos'"):
        layouts.parse_dataset(src, layout="videos")
    assert layouts.detect_layout(src) == "generic"  # auto-detection: not every frame in a video


def test_kfold_keeps_groups_together():
    groups = np.repeat([f"{v:03d}" for v in range(12)], 4)  # 2 real + 2 fake frames a group
    labels = np.tile([0, 0, 1, 1], 12)
    parts = folds.assign_folds(labels, 3, seed=0, val_fraction=0.2, groups=groups)
    held = np.concatenate([p["test"] for p in parts])
    assert sorted(held) == list(range(48))
    for p in parts:
        sides = [set(groups[p[r]]) for r in ("train", "valid", "test")]
        assert not sides[0] & sides[1] and not sides[0] & sides[2] and not sides[1] & sides[2]
        assert len(sides[1]) >= 1
    with pytest.raises(ValueError, match="at least 20 groups"):
        folds.assign_folds(labels, 20, 0, 0.2, groups=groups)


def test_kfold_pools_video_scores():
    from deepfake_jax.experiments import kfold

    metas = [{"video": v} for v in ("fake/1", "fake/1", "real/1", "fake/2", "real/2")]
    pooled = kfold.pooled_video_metrics(np.array([1, 1, 0, 1, 0]),
                                        np.array([0.9, 0.1, 0.6, 0.8, 0.2]), metas)
    # videos fake/1 0.5, fake/2 0.8, real/1 0.6, real/2 0.2: 3 of 4 pairs ranked right
    assert pooled["num_videos"] == 4 and pooled["roc_auc"] == pytest.approx(0.75)
    assert kfold.pooled_video_metrics(np.array([1, 0]), np.array([0.9, 0.1]), [{}, {}]) is None


def test_video_level_scores_are_frame_means(tmp_path):
    metas = [{"video": v} for v in ("fake/1", "fake/1", "real/1", "real/1", "real/2")]
    labels = np.array([1, 1, 0, 0, 0])
    p = np.array([0.9, 0.5, 0.2, 0.6, 0.1])
    m, table = video_metrics.video_level(labels, p, metas, threshold=0.5)
    assert table["video"].tolist() == ["fake/1", "real/1", "real/2"]
    np.testing.assert_allclose(table["p_fake"], [0.7, 0.4, 0.1])
    assert table["frames"].tolist() == [2, 2, 1]
    assert m["num_videos"] == 3 and m["roc_auc"] == 1.0 and m["accuracy"] == 1.0
    assert video_metrics.video_level(labels, p, [{}] * 5, 0.5) is None
    with pytest.raises(ValueError, match="both labels"):
        video_metrics.video_scores(np.array([1, 0]), p[:2], [{"video": "x"}] * 2)


def test_training_reports_video_level_metrics(tmp_path):
    from configs import small_data_faces

    src = make_videos(str(tmp_path / "frames"), n_videos=10, frames=2)
    data = str(tmp_path / "ar")
    convert.convert(src, data, split_ratios="0.6,0.2,0.2", show_progress=False)
    config = small_data_faces.get_config("tiny")
    config.data.dir = data
    workdir = str(tmp_path / "run")
    summary = tasks.train_and_evaluate(config, workdir)
    test = summary["eval"]["test"]
    assert test["video"]["num_videos"] == 4 and test["num_examples"] == 8
    with open(os.path.join(workdir, "eval", "test", "video_predictions.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and all(r["frames"] == "2" for r in rows)
    with open(os.path.join(workdir, "eval", "test", "predictions.csv")) as f:
        frames = list(csv.DictReader(f))
    for r in rows:
        mine = [float(x["p_fake"]) for x in frames if x["path"].startswith(r["video"] + "/")]
        assert float(r["p_fake"]) == pytest.approx(np.mean(mine), abs=1e-5)
