"""Augmentation throughput per CPU core at 224 px, next to pure JPEG decoding in the same run.

    python bench/augment_throughput.py [--images_dir DIR] [--images 256] [--image_size 256]
        [--crop 224] [--repeats 5] [--json PATH]

Rates are images per CPU-second of this process (`time.process_time`), i.e. per core: OpenCV
is pinned to one thread, and CPU time, unlike wall time, does not count the time other
processes on a shared machine take from us. Medians over `--repeats` passes.

Row (a0): `cv2.imdecode` with glibc's default malloc settings, timed first; then the process
switches to the input pipeline's (`pipeline_tuning.keep_freed_memory`, which saves each decode
page-faulting a fresh output buffer), which every later row, (a) included, runs under.
Rows: (a) `cv2.imdecode` alone (the floor every pipeline pays); (a2) `simplejpeg.decode_jpeg`
alone (the decoder `image_io` uses for plain JPEGs); (b) the project's checked RGB decode;
decode + random crop + flip + preset none / light / strong; each op alone on 224-px crops
(prob 1, default ranges) and decode + crop + that op; last, the grain training pipeline
(ArrayRecord read, msgpack, shuffle, decode, augment, batch; no threads). "vs (a)" is the
rate relative to pure decoding timed alongside in each repeat (goal for the strong preset:
>= 0.5). The table also goes to --json, with the load average before and after.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cpu_seconds(fn) -> float:
    t0 = time.process_time()
    fn()
    return max(time.process_time() - t0, 1e-9)


def _paired(fn, count: int, decode, decode_count: int, repeats: int) -> tuple[float, float]:
    """(median images per CPU-second of fn, median ratio to `decode` measured alongside).

    Each repeat times `decode` right before `fn`, so load from other processes on a shared
    machine (which slows both) largely cancels in the ratio.
    """
    fn()  # warm-up: caches, lazily built tables (noise bank), grain threads
    rates, ratios = [], []
    for _ in range(repeats):
        decode_rate = decode_count / _cpu_seconds(decode)
        rate = count / _cpu_seconds(fn)
        rates.append(rate)
        ratios.append(rate / decode_rate)
    return statistics.median(rates), statistics.median(ratios)


def _drain(iterator, count: int) -> None:
    for _ in range(count):
        next(iterator)


def _load_blobs(args, tmp: str) -> tuple[list[bytes], list[int], str]:
    if args.images_dir:
        paths = sorted(glob.glob(os.path.join(args.images_dir, "**", "*.jp*g"), recursive=True))
        if not paths:
            sys.exit(f"--images_dir {args.images_dir}: no .jpg/.jpeg files found")
        paths = paths[: args.images]
        what = f"{len(paths)} JPEGs from {args.images_dir}"
    else:
        from data_prep import synthetic

        synthetic.generate_140k(tmp, {"train": max(1, args.images // 2)},
                                image_size=args.image_size, seed=0)
        paths = sorted(glob.glob(os.path.join(tmp, "**", "*.jpg"), recursive=True))
        what = f"{len(paths)} synthetic {args.image_size}-px JPEGs"
    blobs = []
    for p in paths:
        with open(p, "rb") as f:
            blobs.append(f.read())
    labels = [int("fake" in os.path.relpath(p, args.images_dir or tmp).split(os.sep))
              for p in paths]
    return blobs, labels, what


def _write_array_record(blobs: list[bytes], labels: list[int], path: str) -> None:
    from array_record.python.array_record_module import ArrayRecordWriter

    from deepfake_jax.data import records

    writer = ArrayRecordWriter(path, "group_size:1")
    for i, (blob, label) in enumerate(zip(blobs, labels, strict=True)):
        writer.write(records.encode_record(blob, label, f"img{i}.jpg", ""))
    writer.close()


def main() -> None:
    from deepfake_jax.data import augment_ops
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images_dir", help="a folder of JPEGs (default: generate synthetic)")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--image_size", type=int, default=256, help="synthetic images only")
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=os.path.join(tempfile.gettempdir(),
                                                       "deepfake_jax_bench_augment.json"))
    args = parser.parse_args()
    load_before = os.getloadavg()[0]

    import cv2
    import simplejpeg

    from deepfake_jax.data import augment, input_pipeline, pipeline_tuning
    from deepfake_jax.data.image_io import decode_image_rgb

    cv2.setNumThreads(1)
    crop = args.crop
    rows: list[tuple[str, float | None, float]] = []  # (what, images/s, ratio to (a))
    with tempfile.TemporaryDirectory() as tmp:
        blobs, labels, what = _load_blobs(args, os.path.join(tmp, "images"))
        n = len(blobs)
        print(f"{what}; crop {crop}; medians of {args.repeats}; cv2 threads 1", flush=True)
        arrays = [np.frombuffer(b, np.uint8) for b in blobs]
        rngs = [np.random.default_rng(i) for i in range(n)]

        decode = lambda: [cv2.imdecode(a, cv2.IMREAD_COLOR) for a in arrays]  # noqa: E731
        measure = lambda fn, count=n: _paired(fn, count, decode, n, args.repeats)  # noqa: E731
        rows.append(("(a0) cv2.imdecode only, default glibc malloc", *measure(decode)))
        tuned = pipeline_tuning.keep_freed_memory()
        rows.append((f"(a) cv2.imdecode only{'' if tuned else ' (malloc not tuned)'}",
                     *measure(decode)))
        rows.append(("(a2) simplejpeg.decode_jpeg only", *measure(
            lambda: [simplejpeg.decode_jpeg(b, colorspace="RGB") for b in blobs])))
        rows.append(("(b) decode_image_rgb (RGB, checks)",
                     *measure(lambda: [decode_image_rgb(b) for b in blobs])))

        policies = {name: augment.AugmentPolicy.preset(name) for name in augment.PRESETS}
        cheaper = {"blur": {"prob": 0.25}, "jpeg": {"prob": 0.25}}
        variants = policies | {"strong, blur+jpeg p 0.25": augment.AugmentPolicy.preset(
            "strong", cheaper)}
        for name, policy in variants.items():
            rows.append((f"decode + crop + flip + preset {name}", *measure(
                lambda p=policy: [p(decode_image_rgb(b), r, crop) for b, r in
                                  zip(blobs, rngs, strict=True)])))

        crops = [augment_ops.center_crop(decode_image_rgb(b), crop).copy() for b in blobs]
        rows.append((f"--- each op alone on {crop}-px crops (prob 1): images/s | "
                     "decode+crop+op vs (a)", None, 0.0))
        for name in augment.OPS:
            alone, _ = measure(lambda name=name: [augment.apply_op(name, c, r) for c, r in
                                                  zip(crops, rngs, strict=True)])
            _, with_decode = measure(lambda name=name: [augment.apply_op(
                name, augment_ops.random_crop(decode_image_rgb(b), crop, r), r)
                for b, r in zip(blobs, rngs, strict=True)])
            rows.append((f"  {name}", alone, with_decode))
        alone, _ = measure(lambda: [augment_ops.random_resized_crop(c, crop, r) for c, r in
                                    zip(crops, rngs, strict=True)])
        rows.append(("  resized_crop (instead of random crop)", alone, float("nan")))
        for name, op in augment_ops.RANDAUGMENT_OPS.items():
            alone, _ = measure(lambda op=op: [op(c, 5.0, r) for c, r in
                                              zip(crops, rngs, strict=True)])
            rows.append((f"  randaugment {name} (m=5)", alone, float("nan")))

        # grain with no prefetch threads: the work happens inside next(), on this core.
        files = [os.path.join(tmp, "train.array_record")]
        _write_array_record(blobs, labels, files[0])
        batch = 32
        num_batches = max(4, n // batch)
        for name in ("none", "strong"):
            pre = input_pipeline.Preprocess(
                crop, augment=augment.AugmentSchedule(policies[name]))
            it = input_pipeline.train_iterator(files, pre, batch, seed=0, read_threads=0)
            # Each batch dropped before the next, as a training loop does: holding them all
            # (a list) makes every batch fresh memory to page in, ~10x the cost of the copy.
            rows.append((f"grain train pipeline, preset {name}, no threads", *measure(
                lambda it=it: _drain(it, num_batches), num_batches * batch)))
            it.close()

    print(f"\n{'what':58s} {'images/s/core':>14s} {'vs (a)':>8s}")
    for label, rate, ratio in rows:
        if rate is None:
            print(label)
            continue
        ratio_s = "" if ratio != ratio else f"{ratio:.2f}x"  # NaN: not measured with decode
        print(f"{label:58s} {rate:14.0f} {ratio_s:>8s}")
    meta = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
            "images": what, "cpu_count": os.cpu_count(), "opencv": cv2.__version__,
            "simplejpeg": simplejpeg.__version__,
            "load_avg_1min_before_after": [load_before, os.getloadavg()[0]]}
    table = [{"what": label, "images_per_cpu_s": rate, "vs_a": None if ratio != ratio else ratio}
             for label, rate, ratio in rows if rate is not None]
    with open(args.json, "w") as f:
        json.dump({"meta": meta, "rows": table}, f, indent=1)
    print(f"load average {meta['load_avg_1min_before_after']}; wrote {args.json}")


if __name__ == "__main__":
    main()
