"""Benchmark: a TFDS GeneratorBasedBuilder (file_format="array_record") vs data_prep.convert.

Not part of the tests. TFDS must NOT be installed into the project venv; use a separate one:

    python -m venv /tmp/tfds-venv
    /tmp/tfds-venv/bin/pip install tensorflow-datasets array-record numpy pillow
    source .venv/bin/activate
    python bench/tfds_vs_direct.py --tfds-python /tmp/tfds-venv/bin/python [--images DIR] [-n 300]

Without --images it writes n small random-content JPEGs (256 px); with --images DIR (a folder
with real/ and fake/ subfolders, e.g. ../shared/data/faces-sample/140k) it takes the first n/2
of each class. The same files are converted twice:

  direct: data_prep.convert (decode-validate, sha256, msgpack records, report)   [project venv]
  tfds:   GeneratorBasedBuilder, tfds.features.Image given file PATHS, ClassLabel, Text
          download_and_prepare() then tfds.data_source(...) random reads          [tfds venv]

and checked: are the stored bytes the original files (the original bytes occur contiguously in
each serialized record), and does tfds.data_source read without TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

_TFDS_PART = r'''
import json, os, sys, time
t_import = time.perf_counter()
import numpy as np
import tensorflow_datasets as tfds
t_import = time.perf_counter() - t_import
src, data_dir = sys.argv[1], sys.argv[2]
files = []
for label, cls in enumerate(("real", "fake")):
    for name in sorted(os.listdir(os.path.join(src, "train", cls))):
        files.append((os.path.join(src, "train", cls, name), label, f"train/{cls}/{name}"))

class FacesBench(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(names=["real", "fake"]),
            "path": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for path, label, rel in files:
            yield rel, {"image": path, "label": label, "path": rel}

t0 = time.perf_counter()
builder = FacesBench(data_dir=data_dir, file_format="array_record")
builder.download_and_prepare()
t_build = time.perf_counter() - t0
size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(data_dir) for f in fs)

ds = tfds.data_source("faces_bench", split="train", data_dir=data_dir)
t0 = time.perf_counter()
rng = np.random.default_rng(0)
order = rng.permutation(len(ds))
items = [ds[int(i)] for i in order]
t_read = time.perf_counter() - t0
# raw records: is each original file contained byte-for-byte?
from array_record.python.array_record_data_source import ArrayRecordDataSource
shards = sorted(os.path.join(d, f) for d, _, fs in os.walk(data_dir) for f in fs
                if ".array_record" in f)
raw = ArrayRecordDataSource(shards)
originals = {rel: open(p, "rb").read() for p, _, rel in files}
identical = 0
for i in range(len(raw)):
    rec = raw[i]
    identical += any(orig in rec for orig in originals.values())
print(json.dumps({
    "tfds_version": tfds.__version__, "tensorflow_imported": "tensorflow" in sys.modules,
    "import_s": t_import, "build_s": t_build, "bytes_on_disk": size,
    "num_records": len(ds), "read_random_s": t_read,
    "first_item": {k: (f"ndarray{v.shape} {v.dtype}" if hasattr(v, "shape") and v.ndim
                       else (v.decode() if isinstance(v, bytes) else str(v)))
                   for k, v in items[0].items()},
    "records_containing_original_bytes": identical,
}))
'''


def make_inputs(src: str | None, n: int, dest: str) -> None:
    import cv2
    import numpy as np

    per = n // 2
    for cls in ("real", "fake"):
        os.makedirs(os.path.join(dest, "train", cls))
        if src:
            names = sorted(os.listdir(os.path.join(src, cls)))[:per]
            for name in names:
                shutil.copy(os.path.join(src, cls, name), os.path.join(dest, "train", cls, name))
        else:
            rng = np.random.default_rng(0 if cls == "real" else 1)
            for i in range(per):
                img = cv2.GaussianBlur(rng.integers(0, 256, (256, 256, 3), np.uint8), (7, 7), 2)
                ok, enc = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
                with open(os.path.join(dest, "train", cls, f"{i:05d}.jpg"), "wb") as f:
                    f.write(enc.tobytes())


def run_direct(src: str, out: str) -> dict:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    t0 = time.perf_counter()
    from data_prep import convert
    from deepfake_jax import records
    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    manifest = convert.convert(src, out, layout="generic", show_progress=False)
    t_build = time.perf_counter() - t0
    import grain
    import numpy as np

    files = [f for s in manifest["splits"] for f in records.split_files(out, s)]
    size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    shard_size = sum(os.path.getsize(f) for f in files)
    from deepfake_jax.image_io import decode_image_rgb

    source = grain.sources.ArrayRecordDataSource(files)
    t0 = time.perf_counter()
    items = []
    for i in np.random.default_rng(0).permutation(len(source)):
        rec = records.decode_record(source[int(i)])
        items.append(decode_image_rgb(rec["image"], rec["path"]))
    t_read = time.perf_counter() - t0
    identical = 0
    for i in range(len(source)):
        rec = records.decode_record(source[i])
        with open(os.path.join(src, rec["path"]), "rb") as f:
            identical += f.read() == rec["image"]
    return {"import_s": t_import, "build_s": t_build, "bytes_on_disk_all": size,
            "bytes_on_disk_shards": shard_size, "num_records": len(source),
            "read_random_s": t_read, "records_identical_to_original": identical}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", default=None, help="folder with real/ and fake/ (optional)")
    p.add_argument("-n", type=int, default=300)
    p.add_argument("--tfds-python", default="/tmp/tfds-venv/bin/python")
    args = p.parse_args()
    work = tempfile.mkdtemp(prefix="tfds_vs_direct_")
    try:
        src = os.path.join(work, "images")
        make_inputs(args.images, args.n, src)
        n_bytes = sum(os.path.getsize(os.path.join(d, f))
                      for d, _, fs in os.walk(src) for f in fs)
        print(f"{args.n} JPEGs, {n_bytes / 1e6:.2f} MB in {src}")
        direct = run_direct(src, os.path.join(work, "direct"))
        print("direct:", json.dumps(direct, indent=1))
        t0 = time.perf_counter()
        proc = subprocess.run([args.tfds_python, "-c", _TFDS_PART, src,
                               os.path.join(work, "tfds")], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print("tfds part failed:\n", proc.stderr[-3000:])
            return
        tfds_res = json.loads(proc.stdout.strip().splitlines()[-1])
        tfds_res["process_wall_s"] = wall
        print("tfds:", json.dumps(tfds_res, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
