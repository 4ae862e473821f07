"""Side-by-side throughput in one run: JPEG decoding, the training input pipeline, a train step.

    python bench/pipeline_and_step.py [--images 512] [--image_size 256] [--crop 224]
        [--model_variant 50] [--batch 16] [--steps 6] [--workers 0,2]

(a) plain `cv2.imdecode` of the generated JPEGs (the floor any pipeline pays),
(b) our decode + `decode_image_rgb` checks (what every record goes through),
(c) the full grain train pipeline (ArrayRecord read, msgpack, decode, random crop, flip, batch),
    with 0 and N worker processes,
(d) the jitted, sharded train step of ResNet-<variant> at <crop> px (compile time excluded).
Reports medians over repeats; machines are shared and noisy, so compare ratios within one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _median_rate(fn, count: int, repeats: int) -> float:
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        rates.append(count / (time.perf_counter() - t0))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=256, help="images per class")
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--model_variant", default="50")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--workers", default="0,2")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip_step", action="store_true")
    args = parser.parse_args()

    import cv2
    import grain
    import jax

    from configs import default
    from data_prep import convert, synthetic
    from deepfake_jax.data import input_pipeline, records
    from deepfake_jax.data.image_io import decode_image_rgb
    from deepfake_jax.tasks import classification
    from deepfake_jax.training import optim, sharding, train_state

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        images_dir, data_dir = os.path.join(tmp, "images"), os.path.join(tmp, "ar")
        t0 = time.perf_counter()
        synthetic.generate_140k(images_dir, {"train": args.images}, image_size=args.image_size,
                                seed=0)
        gen_s = time.perf_counter() - t0
        convert.convert(images_dir, data_dir, layout="generic", show_progress=False)
        files = records.split_files(data_dir, "train")
        source = grain.sources.ArrayRecordDataSource(files)
        blobs = [records.decode_record(source[i])["image"] for i in range(len(source))]
        n = len(blobs)
        rows.append(("generate synthetic JPEGs", f"{args.image_size}px", n / gen_s, None))

        plain = _median_rate(
            lambda: [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR) for b in blobs],
            n, args.repeats)
        rows.append(("(a) cv2.imdecode only", f"{args.image_size}px", plain, 1.0))
        checked = _median_rate(lambda: [decode_image_rgb(b) for b in blobs], n, args.repeats)
        rows.append(("(b) decode_image_rgb (RGB, checks)", f"{args.image_size}px", checked,
                     checked / plain))

        pre = input_pipeline.Preprocess(crop_size=args.crop)
        for workers in [int(w) for w in args.workers.split(",")]:
            batch = 32
            it = input_pipeline.train_iterator(files, pre, batch, seed=0, num_workers=workers)
            next(it)  # start workers outside the timing
            num_batches = max(4, n // batch)
            rate = _median_rate(lambda it=it, k=num_batches: [next(it) for _ in range(k)],
                                num_batches * batch, args.repeats)
            rows.append((f"(c) train pipeline, {workers} workers", f"crop {args.crop}", rate,
                         rate / plain))

        if not args.skip_step:
            config = default.get_config()
            # The torchvision architecture (ImageNet stem, full width), not the CPU recipe's.
            config.model = {"variant": args.model_variant}
            config.input.batch_size = args.batch
            mesh = sharding.make_mesh(None)
            tx, schedule = optim.build_optimizer(config.optimizer, 1000)
            graphdef, state, shardings = train_state.create_train_state(config, mesh, tx)
            train_fn, _ = classification.make_steps(config, mesh, graphdef, tx, schedule, shardings)
            it = input_pipeline.train_iterator(files, pre, args.batch, seed=0)
            host_batches = [next(it) for _ in range(args.steps + 1)]
            batch0 = sharding.host_to_global(mesh, host_batches[0])
            cost = train_fn.lower(state, batch0).cost_analysis() or {}
            flops = cost.get("flops")
            state, m = train_fn(state, batch0)  # compile + first step
            jax.block_until_ready(m)
            times = []
            for hb in host_batches[1:]:
                b = sharding.host_to_global(mesh, hb)
                t0 = time.perf_counter()
                state, m = train_fn(state, b)
                jax.block_until_ready(m)
                times.append(time.perf_counter() - t0)
            step_s = statistics.median(times)
            note = f"crop {args.crop}, batch {args.batch}"
            if flops:
                note += f", {flops / step_s / 1e9:.0f} GFLOP/s"
            rows.append((f"(d) ResNet-{args.model_variant} train step", note,
                         args.batch / step_s, None))

    print(f"\n{jax.device_count()} x {jax.devices()[0].device_kind}, {os.cpu_count()} CPUs")
    print(f"{'what':42s} {'setting':34s} {'images/s':>10s} {'vs (a)':>8s}")
    for what, setting, rate, ratio in rows:
        ratio_s = f"{ratio:.2f}x" if ratio is not None else ""
        print(f"{what:42s} {setting:34s} {rate:10.1f} {ratio_s:>8s}")


if __name__ == "__main__":
    main()
