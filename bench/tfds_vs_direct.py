"""Benchmark: our ArrayRecord records vs a TFDS dataset, both written by data_prep.convert.

Not part of the tests. Needs the `tfds` extra (pip install -e '.[tfds]'); no TensorFlow.

    python bench/tfds_vs_direct.py [--images DIR] [-n 300] [--repeats 3]

Without --images it writes n small random-content JPEGs (256 px); with --images DIR (a folder
with real/ and fake/ subfolders, e.g. ../shared/data/faces-sample/140k) it takes the first n/2
of each class. The same files are converted twice, after the same validation and report:

  direct: --format arrayrecord (msgpack records, group_size:1)
  tfds:   --format tfds (tf.train.Example records written by TFDS, array_record)

and each is read in a random order, every record once: the record only (our msgpack decode /
tfds.data_source with image decoding skipped), then with the image decoded to RGB by
`image_io.decode_image_rgb` (what the input pipeline does), and for TFDS also with TFDS's own
numpy image decoding. Median wall time over --repeats. Check `uptime` first: timings on a
loaded machine are not comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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


def _disk(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs
               if f.endswith(".array_record") or ".array_record-" in f)


def _median_s(read, order, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in order:
            read(int(i))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(src: str, work: str, repeats: int) -> dict:
    import grain
    import numpy as np
    import tensorflow_datasets as tfds

    from data_prep import convert
    from deepfake_jax.data import records
    from deepfake_jax.data.image_io import decode_image_rgb

    out: dict = {}
    for fmt in ("arrayrecord", "tfds"):
        t0 = time.perf_counter()
        convert.convert(src, os.path.join(work, fmt), layout="generic", show_progress=False,
                        output_format=fmt, tfds_name="faces_bench")
        out[fmt] = {"build_s": time.perf_counter() - t0,
                    "bytes_on_disk": _disk(os.path.join(work, fmt))}

    direct = grain.sources.ArrayRecordDataSource(
        records.split_files(os.path.join(work, "arrayrecord"), "train"))
    raw_tfds = tfds.data_source("faces_bench", split="train",
                                data_dir=os.path.join(work, "tfds"),
                                decoders={"image": tfds.decode.SkipDecoding()})
    np_tfds = tfds.data_source("faces_bench", split="train",
                               data_dir=os.path.join(work, "tfds"))
    order = np.random.default_rng(0).permutation(len(direct))
    identical = sum(records.decode_record(direct[i])["image"] == raw_tfds[i]["image"]
                    for i in range(len(direct)))

    def direct_record(i):
        return records.decode_record(direct[i])

    def direct_rgb(i):
        r = records.decode_record(direct[i])
        return decode_image_rgb(r["image"], r["path"])

    def tfds_rgb(i):
        r = raw_tfds[i]
        return decode_image_rgb(r["image"], "tfds")

    for fmt, key, fn in (("arrayrecord", "read_record_s", direct_record),
                         ("arrayrecord", "read_decode_rgb_s", direct_rgb),
                         ("tfds", "read_record_s", lambda i: raw_tfds[i]),
                         ("tfds", "read_decode_rgb_s", tfds_rgb),
                         ("tfds", "read_tfds_numpy_decode_s", lambda i: np_tfds[i])):
        out[fmt][key] = _median_s(fn, order, repeats)
    out["num_records"] = len(direct)
    out["same_image_bytes"] = identical
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", default=None, help="folder with real/ and fake/ (optional)")
    p.add_argument("-n", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    print("load average (1, 5, 15 min):", os.getloadavg())
    work = tempfile.mkdtemp(prefix="tfds_vs_direct_")
    try:
        src = os.path.join(work, "images")
        make_inputs(args.images, args.n, src)
        res = run(src, work, args.repeats)
        n = res["num_records"]
        print(json.dumps(res, indent=1))
        print(f"\n{n} records, random order, median of {args.repeats}:")
        print(f"{'':28s} {'arrayrecord':>12s} {'tfds':>12s}")
        for key, label in (("build_s", "convert (s)"), ("bytes_on_disk", "shards (MB)"),
                           ("read_record_s", "read record (us/record)"),
                           ("read_decode_rgb_s", "+ decode RGB (us/record)")):
            a, t = res["arrayrecord"][key], res["tfds"][key]
            if key == "bytes_on_disk":
                a, t = a / 1e6, t / 1e6
            elif key.startswith("read"):
                a, t = a / n * 1e6, t / n * 1e6
            print(f"{label:28s} {a:12.2f} {t:12.2f}")
        print(f"{'TFDS numpy decode (us/record)':28s} {'':12s} "
              f"{res['tfds']['read_tfds_numpy_decode_s'] / n * 1e6:12.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
