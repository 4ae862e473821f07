"""A generated corpus of bad inputs through predict, convert, serving, export and the app.

Each entry point must: exit with the documented status, name every bad file with its reason in
one line, still process the good files next to the bad ones, never change an input file, and
refuse images over the per-image bounds (`image_io.MAX_PIXELS`, `MAX_ASPECT_RATIO`) from their
header, before any pixel is decoded or resized. The corpus is written by the `corpus` fixture
into a temporary folder (nothing is stored in git).
"""

import csv
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from data_prep import convert as convert_mod
from data_prep import synthetic
from deepfake_jax import export, predict
from deepfake_jax.data import image_io
from deepfake_jax.inference import scoring, serving

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# file name -> a piece of the reason its error must give
BAD = {
    "corrupt.jpg": "not a recognised image format",
    "truncated.png": "truncated",
    "thin.png": "aspect ratio of 200000:1",  # 1 x 200,000 px
    "thin1m.png": "aspect ratio of 1000000:1",  # 1 x 1,000,000 px
    "huge.png": "400 megapixels",  # a 20000 x 20000 header (and a few rows of data)
    "empty.jpg": "empty file",
    "text.jpg": "not a recognised image format",
    "broken.jpg": "broken symbolic link",
}
GOOD = ("real.jpg", "fake.jpg", "cmyk.jpg", "gray.jpg", "rgba.png", "deep16.png", "anim.gif",
        "scan.tiff", "one.png")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(width: int, height: int, rows: int | None = None) -> bytes:
    """An 8-bit RGB PNG written chunk by chunk: `rows` rows of pixel data (default: all), so a
    header can declare 20000 x 20000 px without anyone holding them."""
    rows = height if rows is None else rows
    raw = (b"\x00" + b"\x80" * (3 * width)) * rows
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw, 9))
            + _chunk(b"IEND", b""))


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def write_corpus(folder, gen_dir) -> dict[str, str]:
    """Writes GOOD and BAD files (and notes.txt) into `folder`; returns {name: path}."""
    os.makedirs(folder)
    synthetic.generate_140k(gen_dir, counts={"test": 1}, image_size=32, difficulty=0.0, seed=0)
    real = open(os.path.join(gen_dir, "test", "real", "test_real_00000.jpg"), "rb").read()
    fake = open(os.path.join(gen_dir, "test", "fake", "test_fake_00000.jpg"), "rb").read()
    rgb = np.asarray(Image.open(io.BytesIO(real)).convert("RGB"))
    frames = [Image.fromarray(rgb), Image.fromarray(rgb[::-1])]
    data = {
        "real.jpg": real,
        "fake.jpg": fake,
        "cmyk.jpg": _save(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95),
        "gray.jpg": _save(Image.fromarray(rgb).convert("L"), "JPEG"),
        "rgba.png": _save(Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 90,
                                                                   np.uint8)])), "PNG"),
        "deep16.png": _save(Image.fromarray(rgb[:, :, 0].astype(np.uint16) * 257), "PNG"),
        "anim.gif": _save(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "scan.tiff": _save(Image.fromarray(rgb), "TIFF"),
        "one.png": png_bytes(1, 1),
        "corrupt.jpg": fake[:len(fake) // 3] + np.random.default_rng(1).bytes(
            len(fake) - len(fake) // 3 - 2) + b"\xff\xd9",
        "truncated.png": _save(Image.fromarray(rgb), "PNG")[:300],
        "thin.png": png_bytes(1, 200_000),
        "thin1m.png": png_bytes(1, 1_000_000),
        "huge.png": png_bytes(20_000, 20_000, rows=4),
        "empty.jpg": b"",
        "text.jpg": b"this is a text file with a .jpg name\n",
        "notes.txt": b"not an image\n",
    }
    paths = {}
    for name, blob in data.items():
        paths[name] = os.path.join(folder, name)
        with open(paths[name], "wb") as f:
            f.write(blob)
    paths["broken.jpg"] = os.path.join(folder, "broken.jpg")
    os.symlink(os.path.join(folder, "gone.jpg"), paths["broken.jpg"])
    return paths


def tree_state(root) -> dict[str, str]:
    """{relative path: sha256 of the content, or 'link -> target'} of everything under root."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                out[rel] = "link -> " + os.readlink(path)
            elif os.path.isfile(path):
                with open(path, "rb") as f:
                    out[rel] = hashlib.sha256(f.read()).hexdigest()
            else:
                out[rel] = "folder"
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    paths = write_corpus(str(root / "mixed"), str(root / "gen"))
    (root / "empty").mkdir()
    return {"root": str(root), "mixed": str(root / "mixed"), "empty": str(root / "empty"),
            "paths": paths}


def _run(args, timeout=120):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "JAX_PLATFORMS": "cpu"})


# ----------------------------------------------------------------------------- the bounds


_PROBE = """
import json, sys, time
import cv2
from deepfake_jax.data import image_io
calls = []
real_imdecode = cv2.imdecode
cv2.imdecode = lambda *a: calls.append(1) or real_imdecode(*a)
out = {}
for path in sys.argv[1:]:
    start = time.time()
    try:
        image_io.decode_image_rgb(image_io.read_image_file(path), path)
        out[path] = "decoded"
    except image_io.ImageSizeError as e:
        out[path] = str(e)
    out[path + " s"] = time.time() - start
out["imdecode calls"] = len(calls)
# VmHWM: this process image's peak resident memory (ru_maxrss would carry the parent's over
# exec when the child was spawned sharing its memory)
hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")]
out["peak MB"] = int(hwm[0].split()[1]) / 1024 if hwm else None
print(json.dumps(out))
"""


def test_oversized_images_are_refused_from_the_header(corpus):
    """Thin and huge images: refused quickly, naming the file, without decoding (so without
    the 1.7-5.8 GB the upscale of a thin strip or a 20000 x 20000 decode took)."""
    names = ("thin.png", "thin1m.png", "huge.png")
    paths = [corpus["paths"][n] for n in names]
    run = _run(["-c", _PROBE, *paths], timeout=60)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    for name, path in zip(names, paths, strict=True):
        assert out[path].startswith(f"image {path} refused: ") and BAD[name] in out[path]
        assert "\n" not in out[path] and out[path + " s"] < 1.0
    assert out["imdecode calls"] == 0  # refused before any decoder ran
    assert out["peak MB"] is None or out["peak MB"] < 300, out  # imports included (~60 MB)
    # the view's resize is bounded as well: a strip within the aspect limit, upscaled
    assert image_io.check_view_size(10, 500, 32) == pytest.approx(3.2)
    with pytest.raises(image_io.ImageSizeError, match="would make 3200x160000 px"):
        image_io.check_view_size(10, 500, 3200, "strip.png")
    with pytest.raises(image_io.ImageSizeError, match="no pixels"):
        image_io.check_size(0, 10, "none.png")


def test_decompression_bomb_header_of_other_formats(tmp_path):
    """Formats whose header PIL reads (BMP here) report PIL's bomb limit as a size error."""
    data = bytearray(_save(Image.new("L", (2, 2)), "BMP"))
    data[18:26] = struct.pack("<ii", 20_000, 20_000)
    with pytest.raises(image_io.ImageSizeError, match="bomb.bmp refused.*50 megapixels"):
        image_io.decode_image_rgb(bytes(data), "bomb.bmp")
    with pytest.raises(image_io.ImageSizeError):
        image_io.probe_image(bytes(data), "bomb.bmp")
    big = tmp_path / "big.jpg"
    with open(big, "wb") as f:
        f.truncate(image_io.MAX_FILE_BYTES + 1)  # sparse: nothing is written or read
    with pytest.raises(image_io.ImageSizeError, match="big.jpg refused: file of 256 MiB"):
        image_io.read_image_file(str(big))


# ----------------------------------------------------------------------------- predict


def test_predict_cli_gives_every_file_a_row_and_changes_nothing(trained_workdir, corpus,
                                                                tmp_path):
    workdir, _ = trained_workdir
    before = tree_state(corpus["root"])
    out = tmp_path / "preds.csv"
    run = _run(["-m", "deepfake_jax.predict", "--workdir", workdir, "--output", str(out),
                corpus["mixed"], corpus["empty"]])
    assert run.returncode == 0, run.stderr  # good files were scored
    assert "Traceback" not in run.stderr
    with open(out, newline="") as f:
        rows = {os.path.basename(r["path"]): r for r in csv.DictReader(f)}
    assert set(rows) == set(GOOD) | set(BAD)  # gif, tiff and the broken link too
    for name in GOOD:
        assert rows[name]["status"] == "ok" and rows[name]["label"] in ("real", "fake"), rows[name]
    for name, reason in BAD.items():
        r = rows[name]
        assert r["status"] == "error" and reason in r["error"] and r["p_fake"] == "", r
        line = f"error: {corpus['paths'][name]}: "
        assert any(ln.strip().startswith(line) and reason in ln
                   for ln in run.stdout.splitlines()), (name, run.stdout)
    assert "x (1x1 px, short side to" in rows["one.png"]["warning"]  # scored, with a warning
    assert f"warning: {corpus['paths']['one.png']}: upscaled" in run.stdout
    assert all(rows[n]["warning"] == "" for n in ("real.jpg", "fake.jpg"))
    assert "notes.txt" in run.stdout and "without an image extension" in run.stdout
    assert run.stderr.count(f"{corpus['empty']} holds no") == 1
    assert tree_state(corpus["root"]) == before


def test_predict_output_is_checked_before_any_work(trained_workdir, corpus, tmp_path):
    workdir, _ = trained_workdir
    target = corpus["paths"]["real.jpg"]
    before = tree_state(corpus["root"])
    run = _run(["-m", "deepfake_jax.predict", "--workdir", workdir, "--output", target,
                corpus["mixed"]])
    assert run.returncode != 0
    assert f"--output {target}: give a .csv or .json" in run.stderr
    assert "scoring with step" not in run.stderr + run.stdout  # nothing restored or scored
    assert tree_state(corpus["root"]) == before
    listed = [corpus["mixed"]]
    with pytest.raises(ValueError, match="is a folder"):
        predict.check_output(str(tmp_path), listed)
    notes = os.path.join(corpus["mixed"], "notes.csv")
    with pytest.raises(ValueError, match="one of the input files"):
        predict.check_output(notes, [notes])  # a file given by name is an input too
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        predict.check_output(str(tmp_path / "file" / "preds.csv"), listed)
    predict.check_output(str(tmp_path / "new" / "preds.json"), listed)  # fine: created later


def test_predict_nan_score_is_an_error_not_a_label(trained_workdir, corpus, monkeypatch):
    workdir, _ = trained_workdir
    monkeypatch.setattr(scoring.Scorer, "__call__",
                        lambda self, views: np.full(len(views), np.nan))
    rows = scoring.predict_paths(workdir, [corpus["paths"]["real.jpg"]])
    assert rows[0]["status"] == "error" and rows[0]["label"] == "" and rows[0]["p_fake"] is None
    assert "p_fake = nan" in rows[0]["error"]


# ----------------------------------------------------------------------------- convert


def _dataset(root, corpus) -> str:
    """A <split>/<class>/ dataset of 2 generated faces per class and split, with the corpus's
    files added to train/fake."""
    synthetic.generate_140k(root, counts={"train": 2, "valid": 2, "test": 2}, image_size=32,
                            difficulty=0.0, seed=1)
    for name, path in corpus["paths"].items():
        dest = os.path.join(root, "train", "fake", name)
        if os.path.islink(path):
            os.symlink(os.readlink(path), dest)
        else:
            shutil.copy(path, dest)
    return root


def test_convert_names_each_bad_file_and_keeps_the_good_ones(corpus, tmp_path, capsys):
    data = _dataset(str(tmp_path / "in"), corpus)
    before = tree_state(data)
    out = str(tmp_path / "out")
    assert convert_mod.main(["--input", data, "--output", out, "--quiet"]) == 0
    console = capsys.readouterr().out
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    # 2 per class and split, plus the good corpus files in train/fake but GIF and TIFF, which
    # convert skips by extension (and says so, like for the bad files)
    assert manifest["splits"]["train"]["counts"] == {"real": 2, "fake": 2 + len(GOOD) - 2}
    skipped = {**BAD, "anim.gif": "not an image extension", "scan.tiff": "not an image extension",
               "notes.txt": "not an image extension"}
    for name, reason in skipped.items():
        assert any(ln.strip().startswith(f"train/fake/{name}: ") and reason in ln
                   for ln in console.splitlines()), (name, console)
    assert tree_state(data) == before


def test_convert_refuses_wrong_layout_and_empty_folder(corpus, capsys):
    for folder in (corpus["mixed"], corpus["empty"]):
        before = tree_state(corpus["root"])
        assert convert_mod.main(["--input", folder, "--output", folder + "_out", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and folder in err and "Traceback" not in err
        assert tree_state(corpus["root"]) == before and not os.path.exists(folder + "_out")


def test_convert_output_guard(corpus, tmp_path, capsys):
    data = _dataset(str(tmp_path / "in"), corpus)
    # a folder of the user's own files with the names convert writes
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my own notes\n")
    (mine / "records.csv").write_text("a,b\n1,2\n")
    before = tree_state(str(mine))
    for extra in ([], ["--overwrite"]):
        assert convert_mod.main(["--input", data, "--output", str(mine), "--quiet",
                                 *extra]) == 2
        err = capsys.readouterr().err
        assert "not empty and holds no previous conversion" in err and str(mine) in err
        assert tree_state(str(mine)) == before
    # an output inside the input: refused before anything is written
    inside = os.path.join(data, "converted")
    assert convert_mod.main(["--input", data, "--output", inside, "--quiet"]) == 2
    assert "is inside --input" in capsys.readouterr().err and not os.path.exists(inside)
    # a previous conversion: --overwrite replaces it; with a file of the user's in it, refused
    out = str(tmp_path / "out")
    assert convert_mod.main(["--input", data, "--output", out, "--quiet"]) == 0
    assert convert_mod.main(["--input", data, "--output", out, "--quiet", "--overwrite"]) == 0
    with open(os.path.join(out, "my_notes.txt"), "w") as f:
        f.write("keep me\n")
    assert convert_mod.main(["--input", data, "--output", out, "--quiet", "--overwrite"]) == 2
    assert "my_notes.txt" in capsys.readouterr().err
    assert open(os.path.join(out, "my_notes.txt")).read() == "keep me\n"


def test_convert_console_flags_files_with_both_labels(corpus, tmp_path, capsys):
    data = _dataset(str(tmp_path / "in"), corpus)
    shutil.copy(corpus["paths"]["gray.jpg"], os.path.join(data, "valid", "real", "same.jpg"))
    shutil.copy(corpus["paths"]["gray.jpg"], os.path.join(data, "valid", "fake", "same.jpg"))
    assert convert_mod.main(["--input", data, "--output", str(tmp_path / "o"), "--quiet"]) == 0
    console = capsys.readouterr().out
    line = next(ln for ln in console.splitlines() if "carry both labels" in ln)
    assert "WARNING" in line and "valid/real/same.jpg" in line and "valid/fake/same.jpg" in line


# ----------------------------------------------------------------------------- export, serving


def _tiny_artifact(path, crop=4):
    """A real jax.export artifact (mean pixel / 255 as p_fake) and its sidecar."""
    batch, = jax.export.symbolic_shape("batch")
    fn = jax.jit(lambda x: jnp.mean(x.astype(jnp.float32), axis=(1, 2, 3)) / 255.0)
    blob = jax.export.export(fn)(jax.ShapeDtypeStruct((batch, crop, crop, 3), jnp.uint8)
                                 ).serialize()
    with open(path, "wb") as f:
        f.write(blob)
    meta = {"format": serving.FORMAT, "crop_size": crop, "threshold": 0.5,
            "sha256": hashlib.sha256(blob).hexdigest()}
    with open(serving.metadata_path(path), "w") as f:
        json.dump(meta, f)
    return blob, meta


def test_serving_truncated_artifact_and_nan_scores(tmp_path):
    path = str(tmp_path / "model.jaxexport")
    blob, meta = _tiny_artifact(path)
    detector = serving.load_exported(path)
    p = detector(np.full((2, 4, 4, 3), 200, np.uint8))
    assert detector.labels(p) == ["fake", "fake"]
    with pytest.raises(ValueError, match=r"positions 1\): no label"):
        detector.labels([0.1, float("nan")])  # NaN was labelled "real"
    with open(path, "wb") as f:
        f.write(blob[:len(blob) // 2])
    with pytest.raises(ValueError, match=f"{path}: the artifact .* does not match the sha256"):
        serving.load_exported(path)
    del meta["sha256"]  # an older sidecar: the deserializer's own error, with the file name
    with open(serving.metadata_path(path), "w") as f:
        json.dump(meta, f)
    with pytest.raises(ValueError, match=f"{path}: not a readable jax.export artifact"):
        serving.load_exported(path)
    with open(serving.metadata_path(path), "w") as f:
        f.write('{"format": ')
    with pytest.raises(ValueError, match="cannot read the artifact's metadata"):
        serving.load_exported(path)


def test_export_refuses_unknown_platforms(trained_workdir, tmp_path, capsys):
    workdir, _ = trained_workdir
    out = tmp_path / "model.jaxexport"
    with pytest.raises(SystemExit) as exit_:
        export.main(["--workdir", workdir, "--output", str(out), "--platforms", "cpu,foo"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "unknown platform(s) 'foo'" in err and "cpu, cuda, rocm, tpu" in err
    assert not out.exists()
    assert export.parse_platforms("CPU, cuda") == ["cpu", "cuda"]


# ----------------------------------------------------------------------------- the app


def test_app_limits_on_the_command_line():
    from deepfake_jax.app import __main__ as app_main

    for flag, value in (("--max_upload_mb", "-1"), ("--max_upload_mb", "nan"),
                        ("--max_megapixels", "0"), ("--max_megapixels", "1000"),
                        ("--batch_size", "0")):
        with pytest.raises(SystemExit) as exit_:
            app_main.parse_args(["--workdir", "w", flag, value])
        assert exit_.value.code == 2, (flag, value)


def test_app_uploads_of_the_corpus(trained_workdir, corpus, monkeypatch):
    pytest.importorskip("flask")
    from deepfake_jax.app import loaded_runs as runs
    from deepfake_jax.app import web

    workdir, _ = trained_workdir
    run = runs.LoadedRun(workdir, batch_size=8)
    client = web.create_app([run], max_upload_mb=8).test_client()
    names = ("real.jpg", "thin.png", "huge.png", "one.png", "text.jpg")
    before = tree_state(corpus["root"])

    def post():
        files = [(open(corpus["paths"][n], "rb"), n) for n in names]
        try:
            return client.post("/predict", data={"images": files},
                               content_type="multipart/form-data")
        finally:
            for f, _ in files:
                f.close()

    page = post().get_data(as_text=True)
    sections = dict(zip(names, page.split('<section class="result"')[1:], strict=True))
    assert 'data-status="ok"' in sections["real.jpg"] and "p-fake" in sections["real.jpg"]
    assert "image refused" in sections["thin.png"] and BAD["thin.png"] in sections["thin.png"]
    assert BAD["huge.png"] in sections["huge.png"]
    one = sections["one.png"]
    assert 'data-status="ok"' in one and "x (1x1 px, short side" in one
    assert "not a readable image" in sections["text.jpg"]
    monkeypatch.setattr(run, "score", lambda views: np.full(len(views), np.nan))
    page = post().get_data(as_text=True)
    real = page.split('<section class="result"')[1]
    assert "p_fake = nan" in real and 'class="real"' not in real and 'class="fake"' not in real
    assert tree_state(corpus["root"]) == before
