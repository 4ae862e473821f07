"""data_prep: layouts, conversion to ArrayRecord, report. Tiny generated images only."""

import collections
import csv
import hashlib
import io
import json
import os
import shutil

import cv2
import grain
import numpy as np
import pytest
from PIL import Image

from data_prep import convert as convert_mod
from data_prep import layouts
from data_prep.convert import OutputExistsError, convert
from data_prep.layouts import LayoutError, detect_layout
from deepfake_jax.data import records
from deepfake_jax.data.image_io import decode_image_rgb

_counter = [0]


def _img(size=16):
    _counter[0] += 1
    rng = np.random.default_rng(_counter[0])
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def write_jpeg(path, size=16):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ok, enc = cv2.imencode(".jpg", _img(size))
    assert ok
    with open(path, "wb") as f:
        f.write(enc.tobytes())
    return str(path)


def write_bytes(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def pil_bytes(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def make_140k(root, counts=None):
    counts = counts or {"train": 6, "valid": 3, "test": 3}
    base = os.path.join(root, "real_vs_fake", "real-vs-fake")
    for split, n in counts.items():
        for cls in ("real", "fake"):
            for i in range(n):
                write_jpeg(os.path.join(base, split, cls, f"{cls}{i:03d}.jpg"))
    return base


def make_ciplab(root, n_real=20, n_per_diff=8):
    base = os.path.join(root, "real_and_fake_face")
    for i in range(n_real):
        write_jpeg(os.path.join(base, "training_real", f"real_{i:05d}.jpg"))
    k = 0
    for diff in ("easy", "mid", "hard"):
        for _ in range(n_per_diff):
            bits = format(k % 16, "04b")
            write_jpeg(os.path.join(base, "training_fake", f"{diff}_{k}_{bits}.jpg"))
            k += 1
    write_jpeg(os.path.join(base, "training_fake", "strange_name.jpg"))
    return base


def read_split(out, split):
    source = grain.sources.ArrayRecordDataSource(records.split_files(out, split))
    return [records.decode_record(source[i]) for i in range(len(source))]


def read_index(out):
    with open(os.path.join(out, "records.csv")) as f:
        return list(csv.DictReader(f))


def load_report(out):
    with open(os.path.join(out, "report.json")) as f:
        return json.load(f)


# ------------------------------------------------------------------------------------------


def test_roundtrip_140k(tmp_path):
    root = str(tmp_path / "in")
    make_140k(root)
    out = str(tmp_path / "out")
    manifest = convert(root, out, records_per_shard=5, show_progress=False)
    assert manifest == records.read_manifest(out)
    assert manifest["layout"] == "140k" and manifest["split_ratios"] is None
    assert manifest["skipped"] == 0 and manifest["classes"] == ["real", "fake"]
    index = read_index(out)
    for split, n in (("train", 6), ("valid", 3), ("test", 3)):
        info = manifest["splits"][split]
        assert info["num_records"] == 2 * n and info["counts"] == {"real": n, "fake": n}
        n_shards = -(-2 * n // 5)
        assert info["files"] == [records.shard_filename(split, i, n_shards)
                                 for i in range(n_shards)]
        recs = read_split(out, split)
        assert len(recs) == 2 * n
        rows = [r for r in index if r["split"] == split]
        for i, (rec, row) in enumerate(zip(recs, rows, strict=True)):
            with open(os.path.join(root, rec["path"]), "rb") as f:
                original = f.read()
            assert rec["image"] == original  # never re-encoded
            assert rec["sha256"] == hashlib.sha256(original).hexdigest() == row["sha256"]
            assert rec["path"].startswith(f"real_vs_fake/real-vs-fake/{split}/")
            assert rec["label"] == (1 if "/fake/" in rec["path"] else 0) == int(row["label"])
            assert rec["meta"] == {} and json.loads(row["meta"]) == {}
            assert int(row["index_in_split"]) == i and row["path"] == rec["path"]
            assert row["shard"] == info["files"][i // 5]
        # seeded shuffle within the split, recorded
        paths = [r["path"] for r in recs]
        members = sorted(paths)
        order = convert_mod.split_order(members, split, 0)
        assert paths == [members[j] for j in order]
    assert [r["path"] for r in read_split(out, "train")] != sorted(
        r["path"] for r in read_split(out, "train"))
    for name in ("report.json", "report.md", "color_histograms.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    rep = load_report(out)
    assert rep["class_balance"]["train"] == {"real": 6, "fake": 6, "total": 12,
                                             "fake_fraction": 0.5}
    assert rep["image_sizes"]["all"] == {"16x16": 24} and rep["formats"]["all"] == {"JPEG": 24}
    assert rep["color_histograms"] == {"file": "color_histograms.png",
                                       "images_per_class": {"real": 12, "fake": 12}}
    # the 140k folder level itself is accepted too
    m2 = convert(os.path.join(root, "real_vs_fake", "real-vs-fake"), str(tmp_path / "o2"),
                 show_progress=False)
    assert m2["splits"]["test"]["num_records"] == 6


def _ciplab_splits(root, out, seed):
    convert(root, out, split_ratios="0.5,0.25,0.25", split_seed=seed, show_progress=False)
    return {r["path"]: r["split"] for r in read_index(out)}


def test_roundtrip_ciplab_seeded_stratified_split(tmp_path):
    root = str(tmp_path / "in")
    make_ciplab(root)
    out = str(tmp_path / "out")
    manifest = convert(root, out, split_ratios="0.5,0.25,0.25", split_seed=0,
                       show_progress=False)
    assert manifest["layout"] == "ciplab" and manifest["split_ratios"] == [0.5, 0.25, 0.25]
    assert manifest["split_source"] == "seeded_stratified"
    recs = {s: read_split(out, s) for s in ("train", "valid", "test")}
    strata = collections.Counter()
    for split, rs in recs.items():
        for rec in rs:
            with open(os.path.join(root, rec["path"]), "rb") as f:
                assert rec["image"] == f.read()
            name = os.path.basename(rec["path"])
            if rec["label"] == 0:
                assert name.startswith("real_") and rec["meta"] == {}
                strata[(split, "real")] += 1
            elif name == "strange_name.jpg":
                assert rec["meta"] == {"difficulty": "unknown"}
            else:
                diff, k, bits = name[:-4].split("_")
                assert rec["meta"] == {"difficulty": diff, "edited": [int(b) for b in bits]}
                strata[(split, diff)] += 1
    # stratified: 20 reals -> 10/5/5, 8 per difficulty -> 4/2/2
    for split, frac in (("train", 0.5), ("valid", 0.25), ("test", 0.25)):
        assert strata[(split, "real")] == 20 * frac
        for diff in ("easy", "mid", "hard"):
            assert strata[(split, diff)] == 8 * frac
    assert sum(manifest["splits"][s]["num_records"] for s in recs) == 20 + 24 + 1
    rep = load_report(out)
    assert rep["ciplab"]["unparsed_names"] == 1
    assert rep["ciplab"]["difficulty"] == {"easy": 8, "mid": 8, "hard": 8, "unknown": 1}
    assert sum(rep["ciplab"]["edited_regions"].values()) == sum(
        bin(k % 16).count("1") for k in range(24))
    # recorded, reproducible for the same seed, different for another
    a = _ciplab_splits(root, str(tmp_path / "a"), 0)
    assert a == {r["path"]: r["split"] for r in read_index(out)}
    assert _ciplab_splits(root, str(tmp_path / "b"), 0) == a
    assert _ciplab_splits(root, str(tmp_path / "c"), 1) != a


def _touch_images(root, rels):
    for rel in rels:
        write_jpeg(os.path.join(root, rel), size=8)
    return str(root)


@pytest.mark.parametrize("rels,expected", [
    ([f"real_vs_fake/real-vs-fake/{s}/{c}/a.jpg" for s in ("train", "valid", "test")
      for c in ("real", "fake")], "140k"),
    ([f"{s}/{c}/a.jpg" for s in ("train", "valid", "test") for c in ("real", "fake")],
     "140k"),
    ([f"{s}/{c}/a.jpg" for s in ("train", "valid", "test")
      for c in ("real_faces", "fake_faces")], "seed"),
    ([f"rvf10k/{s}/{c}/a.jpg" for s in ("train", "valid") for c in ("real", "fake")],
     "rvf10k"),
    (["real_and_fake_face/training_real/real_1.jpg",
      "real_and_fake_face/training_fake/easy_1_0001.jpg"], "ciplab"),
    (["training_real/real_1.jpg", "training_fake/hard_1_1000.jpg"], "ciplab"),
    (["Train/Real/a.jpg", "Train/FAKE/a.jpg", "Val/real/a.jpg", "Val/fake/a.png"], "generic"),
    (["0/a.jpg", "1/b.jpg"], "generic"),
    (["real_faces/a.jpg", "fake_faces/b.jpg"], "generic"),
])
def test_detect_layout(tmp_path, rels, expected):
    root = _touch_images(tmp_path / "ds", rels)
    assert detect_layout(root) == expected
    parsed = layouts.parse_dataset(root)
    assert parsed.layout == expected
    assert {s.label for s in parsed.samples} == {0, 1}
    assert all(s.split in ("train", "valid", "test") for s in parsed.samples)


def test_rvf10k_root_is_the_folder(tmp_path):
    root = _touch_images(tmp_path / "rvf10k", [f"{s}/{c}/a.jpg" for s in ("train", "valid")
                                              for c in ("real", "fake")])
    assert detect_layout(root) == "rvf10k"


def test_generic_split_aliases(tmp_path):
    root = _touch_images(tmp_path / "ds", ["TRAIN/real/a.jpg", "train_x/fake/b.jpg",
                                           "Validation/fake/c.JPG", "test/1/d.jpeg",
                                           "test/0/e.webp"])
    parsed = layouts.parse_dataset(root, "generic")
    got = sorted((s.split, s.label, s.rel_path) for s in parsed.samples)
    assert got == [("test", 0, "test/0/e.webp"), ("test", 1, "test/1/d.jpeg"),
                   ("train", 0, "TRAIN/real/a.jpg"), ("valid", 1, "Validation/fake/c.JPG")]


def test_unknown_layout_message(tmp_path):
    root = _touch_images(tmp_path / "ds", ["photos/people/a.jpg", "misc/b.jpg"])
    with pytest.raises(LayoutError) as info:
        detect_layout(root)
    msg = str(info.value)
    assert "photos/" in msg and "people/" in msg and "misc/" in msg
    for choice in layouts.LAYOUT_CHOICES:
        assert choice in msg
    with pytest.raises(LayoutError, match="does not look like layout 'seed'"):
        layouts.parse_dataset(root, "seed")


def test_bad_and_unusual_files(tmp_path):
    root = str(tmp_path / "in")
    base = _img(20)
    good = [write_jpeg(os.path.join(root, "train", c, f"ok{i}.jpg")) for c in ("real", "fake")
            for i in range(3)]
    write_jpeg(os.path.join(root, "valid", "real", "v.jpg"))
    write_jpeg(os.path.join(root, "valid", "fake", "v.jpg"))
    jpeg = pil_bytes(Image.fromarray(base), "JPEG")
    bad = {
        "train/fake/corrupt.jpg": np.random.default_rng(5).bytes(3000),
        "train/fake/truncated.jpg": jpeg[: len(jpeg) // 2],
        "train/real/empty.jpg": b"",
        "train/real/text.png": b"this is not a png\n",
    }
    for rel, data in bad.items():
        write_bytes(os.path.join(root, rel), data)
    write_bytes(os.path.join(root, "train", "real", "notes.txt"), b"hello")
    ok16, enc16 = cv2.imencode(".png", base[:, :, ::-1].astype(np.uint16) * 257)  # BGR
    odd = {
        "train/real/gray.jpg": (pil_bytes(Image.fromarray(base).convert("L"), "JPEG"), "L"),
        "train/real/rgba.png": (pil_bytes(Image.fromarray(
            np.dstack([base, np.full((20, 20), 100, np.uint8)])), "PNG"), "RGBA"),
        "train/fake/cmyk.jpg": (pil_bytes(Image.fromarray(base).convert("CMYK"), "JPEG",
                                          quality=95), "CMYK"),
        "train/fake/deep.png": (enc16.tobytes(), "RGB 16-bit"),
        "train/fake/pal.png": (pil_bytes(Image.fromarray(base).convert("P"), "PNG"), "P"),
    }
    for rel, (data, _) in odd.items():
        write_bytes(os.path.join(root, rel), data)

    out = str(tmp_path / "out")
    manifest = convert(root, out, show_progress=False)
    assert manifest["layout"] == "generic" and manifest["skipped"] == 5
    rep = load_report(out)
    reasons = {s["path"]: s["reason"] for s in rep["skipped"]["files"]}
    assert set(reasons) == set(bad) | {"train/real/notes.txt"}
    assert reasons["train/real/notes.txt"] == "not an image extension"
    assert "empty" in reasons["train/real/empty.jpg"]
    assert "truncated" in reasons["train/fake/truncated.jpg"]
    assert "not a recognised image format" in reasons["train/real/text.png"]
    assert "not a recognised image format" in reasons["train/fake/corrupt.jpg"]
    md = open(os.path.join(out, "report.md")).read()
    assert "train/fake/truncated.jpg" in md and "Skipped files: 5" in md

    recs = {r["path"]: r for r in read_split(out, "train")}
    assert set(recs) == {os.path.relpath(p, root) for p in good} | set(odd)
    assert manifest["splits"]["train"]["counts"] == {"real": 5, "fake": 6}
    for rel, (data, mode) in odd.items():
        assert recs[rel]["image"] == data  # kept unchanged
        assert rel in rep["flagged_modes"][mode]["examples"]
        rgb = decode_image_rgb(recs[rel]["image"], rel)
        assert rgb.shape == (20, 20, 3) and rgb.dtype == np.uint8
        ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        assert np.abs(rgb.astype(int) - ref).max() <= 2, mode
        if mode in ("RGBA", "RGB 16-bit"):
            np.testing.assert_array_equal(rgb, base)
    assert rep["colour_modes"]["all"]["RGB"] == 8


def test_empty_inputs(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LayoutError, match="no known dataset layout"):
        convert(str(empty), str(tmp_path / "o1"), show_progress=False)
    for s in ("train", "valid", "test"):
        for c in ("real", "fake"):
            (tmp_path / "noimg" / s / c).mkdir(parents=True)
    (tmp_path / "noimg" / "train" / "real" / "readme.txt").write_text("x")
    with pytest.raises(LayoutError, match="no image files"):
        convert(str(tmp_path / "noimg"), str(tmp_path / "o2"), show_progress=False)
    with pytest.raises(LayoutError, match="does not exist"):
        convert(str(tmp_path / "missing"), str(tmp_path / "o3"), show_progress=False)


def test_overwrite_and_cli(tmp_path, capsys):
    root = str(tmp_path / "in")
    make_140k(root, {"train": 2, "valid": 1, "test": 1})
    out = str(tmp_path / "out")
    argv = ["--input", root, "--output", out, "--quiet"]
    assert convert_mod.main(argv) == 0
    first = records.read_manifest(out)
    assert "train:" in capsys.readouterr().out
    with pytest.raises(OutputExistsError, match="--overwrite"):
        convert(root, out, show_progress=False)
    assert convert_mod.main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert records.read_manifest(out) == first  # untouched
    assert convert_mod.main(argv + ["--overwrite", "--records_per_shard", "1"]) == 0
    files = sorted(f for f in os.listdir(out) if f.endswith(".array_record"))
    assert len(files) == 8 and "train-00000-of-00004.array_record" in files
    assert convert_mod.main(["--input", str(tmp_path / "nope"), "--output", out, "--quiet",
                             "--overwrite"]) == 2


def test_interrupted_conversion_leaves_no_manifest(tmp_path, monkeypatch):
    root = str(tmp_path / "in")
    make_140k(root, {"train": 2, "valid": 1, "test": 1})
    out = str(tmp_path / "out")

    def boom(*a, **k):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(convert_mod.report, "write_report", boom)
    with pytest.raises(RuntimeError):
        convert(root, out, show_progress=False)
    with pytest.raises(FileNotFoundError, match="manifest.json is missing"):
        records.read_manifest(out)
    with pytest.raises(OutputExistsError):  # half-written shards are not silently reused
        convert(root, out, show_progress=False)


def test_duplicates_across_splits(tmp_path):
    root = str(tmp_path / "in")
    base = make_140k(root, {"train": 3, "valid": 1, "test": 2})
    src = os.path.join(base, "train", "real", "real000.jpg")
    shutil.copy(src, os.path.join(base, "test", "real", "leaked.jpg"))
    shutil.copy(src, os.path.join(base, "train", "real", "copy.jpg"))
    shutil.copy(os.path.join(base, "valid", "fake", "fake000.jpg"),
                os.path.join(base, "valid", "real", "mislabelled.jpg"))
    out = str(tmp_path / "out")
    manifest = convert(root, out, show_progress=False)
    assert manifest["duplicates"] == {"within_split_groups": 2, "cross_split_groups": 1}
    dup = load_report(out)["duplicates"]
    (group,) = dup["cross_split"]["groups"]
    prefix = "real_vs_fake/real-vs-fake/"
    assert {(e["split"], e["path"]) for e in group["entries"]} == {
        ("train", prefix + "train/real/real000.jpg"), ("train", prefix + "train/real/copy.jpg"),
        ("test", prefix + "test/real/leaked.jpg")}
    assert group["splits"] == ["test", "train"]
    assert dup["label_conflicts"]["num_groups"] == 1
    rep = load_report(out)
    assert any("leakage" in w for w in rep["warnings"])


def test_workers_match_single_process(tmp_path):
    root = str(tmp_path / "in")
    make_140k(root, {"train": 20, "valid": 2, "test": 2})
    write_bytes(os.path.join(root, "real_vs_fake/real-vs-fake/train/fake/bad.jpg"), b"xx")
    convert(root, str(tmp_path / "a"), show_progress=False, workers=1)
    convert(root, str(tmp_path / "b"), show_progress=False, workers=2)
    assert read_index(str(tmp_path / "a")) == read_index(str(tmp_path / "b"))
    assert load_report(str(tmp_path / "b"))["skipped"]["count"] == 1
