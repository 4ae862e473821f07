"""Does Grad-CAM point at the edited region? A check on generated CIPLab-style fakes.

    python bench/heatmap_regions.py --out runs/heatmap_regions [--num_real 1000 --num_fake 1000]
        [--image_size 64] [--steps 1000] [--learning_rate 1e-3] [--workdir DIR_OF_A_TRAINED_RUN]

1. Generates CIPLab-style real/fake faces with face-parsing label maps
   (`data_prep.synthetic.generate_ciplab(..., masks=True)`; fakes named
   `{easy,mid,hard}_<id>_<bits>.jpg`, bits = left eye, right eye, nose, mouth pasted from
   another face) and converts them (seeded 80/10/10 split).
2. Trains a detector on them (ResNet "tiny", small stem, full-image crops so that heatmaps and
   label maps share their pixels), unless `--workdir` already holds a checkpoint.
3. On the test split's fakes: Grad-CAM (`deepfake_jax.inference.explain`), then for each part
   the share
   of the heat on that part's parsing classes vs its share of the pixels, averaged over the
   fakes where the part was edited, and over those where it was not (the control).

An edited part "gets more than its area share" when heat share / area share > 1 among the
fakes that edited it, and more than among the fakes that left it alone. Prints the table and
writes it with the settings to `<out>/heatmap_regions.json`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# the parsing classes of each CIPLab bit (mouth: the lips and the mouth opening)
PARTS = {
    "left eye": ("l_eye",),
    "right eye": ("r_eye",),
    "nose": ("nose",),
    "mouth": ("u_lip", "l_lip", "mouth"),
}


def prepare_data(out: str, num_real: int, num_fake: int, image_size: int, seed: int):
    from data_prep import convert, synthetic

    images, converted = os.path.join(out, "images"), os.path.join(out, "arrayrecord")
    if not os.path.isdir(os.path.join(images, "training_fake_masks")):
        print(f"generating {num_real} real + {num_fake} fake {image_size}-px faces ...")
        synthetic.generate_ciplab(images, num_real, num_fake, image_size=image_size,
                                  seed=seed, masks=True, progress=True)
    if not os.path.isfile(os.path.join(converted, "manifest.json")):
        convert.convert(images, converted, layout="ciplab", split_seed=seed,
                        show_progress=False)
    return images, converted


def train_detector(workdir: str, converted: str, image_size: int, steps: int, seed: int,
                   learning_rate: float):
    from configs import default
    from deepfake_jax import tasks

    config = default.get_config()
    config.seed = seed
    config.data.dir = converted
    config.input.update(crop_size=image_size, batch_size=32, eval_batch_size=64)
    config.model.update(variant="tiny", width=16, stem="small", input_transform=None)
    config.num_train_steps = steps
    config.optimizer.learning_rate = learning_rate
    config.optimizer.warmup_steps = min(50, steps // 10)
    config.eval_every_steps = steps
    config.checkpoint.every_steps = steps
    config.log_every_steps = max(steps // 10, 1)
    tasks.train_and_evaluate(config, workdir)


def test_fakes(converted: str, images: str, split: str):
    """[(image path, mask path, bits)] of the split's fakes, from the converter's records.csv."""
    from data_prep import synthetic

    out = []
    with open(os.path.join(converted, "records.csv"), newline="") as f:
        for row in csv.DictReader(f):
            if row["split"] != split or int(row["label"]) != 1:
                continue
            stem = os.path.splitext(os.path.basename(row["path"]))[0]
            bits = [int(b) for b in stem.rsplit("_", 1)[1]]
            assert len(bits) == len(synthetic.CIPLAB_PARTS), stem
            out.append((os.path.join(images, row["path"]),
                        os.path.join(images, "training_fake_masks", stem + ".png"), bits))
    return out


def heat_and_area(workdir: str, fakes, batch_size: int = 64):
    """(N, parts) heat shares and area shares of the fakes' Grad-CAM maps, and the bits."""
    import cv2
    import jax
    from flax import nnx

    from deepfake_jax import runs
    from deepfake_jax.data import augment_ops, normalization
    from deepfake_jax.inference import explain, scoring
    from deepfake_jax.training import sharding

    config = runs.load_run_config(workdir)
    mesh = sharding.make_mesh(None, devices=jax.local_devices()[:1])
    graphdef, state, _ = runs.restore_weights(config, workdir, "latest", mesh)
    model = nnx.merge(graphdef, state.ema_params, state.ema_batch_stats)
    crop = int(config.input.crop_size)
    heat, area, bits = [], [], []
    t0 = time.perf_counter()
    for start in range(0, len(fakes), batch_size):
        chunk = fakes[start:start + batch_size]
        views = np.stack([scoring.load_view(p, crop, None)[0] for p, _, _ in chunk])
        labels = np.stack([augment_ops.center_crop(cv2.imread(m, cv2.IMREAD_GRAYSCALE), crop)
                           for _, m, _ in chunk])
        maps = np.asarray(explain.heatmaps(model, normalization.normalize(
            views, config.input.mean, config.input.std)))
        shares = explain.region_shares(maps, labels, PARTS)
        heat.append(np.stack([shares[p][0] for p in PARTS], axis=1))
        area.append(np.stack([shares[p][1] for p in PARTS], axis=1))
        bits += [b for _, _, b in chunk]
        done = start + len(chunk)
        rate = done / (time.perf_counter() - t0)
        print(f"  heatmaps {done}/{len(fakes)} ({rate:.0f} img/s, "
              f"ETA {(len(fakes) - done) / rate:.0f} s)")
    return np.concatenate(heat), np.concatenate(area), np.asarray(bits, bool)


def table(heat, area, bits) -> list[dict]:
    rows = []
    for j, part in enumerate(PARTS):
        row = {"part": part}
        for name, sel in (("edited", bits[:, j]), ("not_edited", ~bits[:, j])):
            h, a = heat[sel, j], area[sel, j]
            row[name] = {"n": int(sel.sum()), "heat_share": float(h.mean()) if len(h) else None,
                         "area_share": float(a.mean()) if len(a) else None}
        rows.append(row)
    return rows


def format_table(rows) -> str:
    lines = ["| part | fakes editing it | heat share | area share | heat / area | "
             "fakes not editing it | heat share | area share | heat / area |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cells = [r["part"]]
        for k in ("edited", "not_edited"):
            c = r[k]
            if not c["n"]:
                cells += ["0", "-", "-", "-"]
                continue
            ratio = c["heat_share"] / c["area_share"] if c["area_share"] else float("nan")
            cells += [str(c["n"]), f"{c['heat_share']:.3f}", f"{c['area_share']:.3f}",
                      f"{ratio:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/heatmap_regions")
    p.add_argument("--workdir", default=None, help="a trained run (default: <out>/run)")
    p.add_argument("--num_real", type=int, default=1000)
    p.add_argument("--num_fake", type=int, default=1000)
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--split", default="test")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from absl import logging

    logging.set_verbosity(logging.INFO)  # the trainer's progress lines
    t0 = time.perf_counter()
    images, converted = prepare_data(args.out, args.num_real, args.num_fake, args.image_size,
                                     args.seed)
    workdir = os.path.abspath(args.workdir or os.path.join(args.out, "run"))
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        train_detector(workdir, converted, args.image_size, args.steps, args.seed,
                       args.learning_rate)
    else:
        print(f"using the trained run in {workdir}")
    fakes = test_fakes(converted, images, args.split)
    if not fakes:
        sys.exit(f"no fakes in split {args.split!r} of {converted}")
    heat, area, bits = heat_and_area(workdir, fakes)
    rows = table(heat, area, bits)
    text = format_table(rows)
    print(text)
    result = {"settings": vars(args), "workdir": workdir, "rows": rows,
              "seconds": time.perf_counter() - t0}
    metrics = os.path.join(workdir, "eval", args.split, "metrics.json")
    if os.path.isfile(metrics):  # the trainer's own final evaluation
        with open(metrics) as f:
            result["roc_auc"] = json.load(f)["roc_auc"]
        print(f"detector ROC AUC on {args.split}: {result['roc_auc']:.3f}")
    with open(os.path.join(args.out, "heatmap_regions.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(f"{len(fakes)} fakes, {result['seconds']:.0f} s; "
          f"written {os.path.join(args.out, 'heatmap_regions.json')}")
    return result


if __name__ == "__main__":
    main()
