"""Spectrum + logistic-regression baseline on the same K folds as `--config.kfold=K`.

    python bench/spectrum_baseline.py --folds runs/cv/folds_data [--bins 64] [--channels gray]
    python bench/spectrum_baseline.py --folds /data/faces_5fold --cross /data/other_ar

Features per image (full decoded image, never resized): the azimuthally averaged log power
spectrum (radial bins of |FFT|^2 of the mean-subtracted grayscale image, or of each RGB
channel), standardised, then scikit-learn's LogisticRegression. For each `fold_<i>/` (written
by `data_prep.folds` / `deepfake_jax.experiments.kfold`) it fits on train + valid and scores test
(fold i),
printing ROC AUC and accuracy (threshold 0.5) per fold and mean +- sample std; `--cross DIR` also
scores DIR's test split with a model fitted on fold 0's train + valid.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from deepfake_jax.data import records  # noqa: E402
from deepfake_jax.data.image_io import decode_image_rgb  # noqa: E402


def radial_log_spectrum(image: np.ndarray, bins: int) -> np.ndarray:
    """(H, W) float image -> (bins,) mean log power per radial frequency band (0 .. Nyquist)."""
    h, w = image.shape
    power = np.abs(np.fft.fftshift(np.fft.fft2(image - image.mean()))) ** 2
    fy = (np.arange(h) - h // 2) / h
    fx = (np.arange(w) - w // 2) / w
    radius = np.hypot(*np.meshgrid(fy, fx, indexing="ij")) / 0.5  # 1.0 = Nyquist
    band = np.minimum((radius * bins).astype(np.int64), bins)  # corners beyond Nyquist: `bins`
    sums = np.bincount(band.ravel(), weights=np.log1p(power).ravel(), minlength=bins + 1)
    counts = np.bincount(band.ravel(), minlength=bins + 1)
    return (sums[:bins] / np.maximum(counts[:bins], 1)).astype(np.float32)


def npr(image: np.ndarray) -> np.ndarray:
    """Neighbouring-pixel residual: the image minus its 2x nearest down-up-sampled copy (the
    same transform as `input_transform="npr"` of the models)."""
    h, w = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    image = image[:h, :w]
    return image - np.repeat(np.repeat(image[::2, ::2], 2, axis=0), 2, axis=1)


def grid_log_spectrum(image: np.ndarray, cells: int) -> np.ndarray:
    """(H, W) -> (cells * (cells // 2 + 1),) mean log power over a cells x cells grid of the
    2D spectrum (half plane: the spectrum of a real image is symmetric). Keeps the direction
    of periodic upsampling peaks that the radial average mixes."""
    power = np.log1p(np.abs(np.fft.rfft2(image - image.mean())) ** 2)
    h, w = power.shape
    rows = np.minimum(np.arange(h) * cells // h, cells - 1)
    cols = np.minimum(np.arange(w) * (cells // 2 + 1) // w, cells // 2)
    sums = np.zeros((cells, cells // 2 + 1))
    np.add.at(sums, (rows[:, None], cols[None, :]), power)
    counts = np.zeros_like(sums)
    np.add.at(counts, (rows[:, None], cols[None, :]), 1.0)
    return (sums / np.maximum(counts, 1)).ravel().astype(np.float32)


FEATURES = ("radial", "npr_radial", "npr_grid")


def features(rgb: np.ndarray, bins: int, channels: str, kind: str = "radial") -> np.ndarray:
    img = rgb.astype(np.float32) / 255.0
    planes = ([img @ np.array([0.299, 0.587, 0.114], np.float32)] if channels == "gray"
              else [img[..., c] for c in range(3)])
    if kind == "radial":
        return np.concatenate([radial_log_spectrum(p, bins) for p in planes])
    if kind == "npr_radial":
        return np.concatenate([radial_log_spectrum(npr(p), bins) for p in planes])
    if kind == "npr_grid":
        return np.concatenate([grid_log_spectrum(npr(p), bins) for p in planes])
    raise ValueError(f"unknown features {kind!r}; valid: {', '.join(FEATURES)}")


def load_split(dataset_dir: str, split: str, bins: int, channels: str, kind: str = "radial"
               ) -> tuple[np.ndarray, np.ndarray]:
    import grain

    files = records.split_files(dataset_dir, split)
    source = grain.sources.ArrayRecordDataSource(files)
    feats, labels = [], []
    for i in range(len(source)):
        record = records.decode_record(source[i])
        rgb = decode_image_rgb(record["image"], record.get("path", f"{split}[{i}]"))
        feats.append(features(rgb, bins, channels, kind))
        labels.append(int(record["label"]))
    return np.stack(feats), np.array(labels)


def fit(x: np.ndarray, y: np.ndarray, c: float):
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000)).fit(x, y)


def evaluate(model, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    p = model.predict_proba(x)[:, 1]
    return {"roc_auc": float(roc_auc_score(y, p)),
            "accuracy": float(accuracy_score(y, (p >= 0.5).astype(int)))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", required=True, help="folder holding fold_0/ ... fold_<K-1>/")
    parser.add_argument("--bins", type=int, default=64)
    parser.add_argument("--channels", choices=("gray", "rgb"), default="gray")
    parser.add_argument("--features", choices=FEATURES, default="radial",
                        help="radial: log power spectrum, azimuthally averaged (the baseline); "
                             "npr_radial / npr_grid: of the neighbouring-pixel residual, "
                             "radially / over a bins x bins grid of the 2D spectrum")
    parser.add_argument("--C", type=float, default=1.0, help="inverse L2 strength")
    parser.add_argument("--cross", action="append", default=[],
                        help="converted dataset whose test split fold 0's model also scores")
    args = parser.parse_args(argv)

    fold_dirs = sorted(glob.glob(os.path.join(args.folds, "fold_*")),
                       key=lambda d: int(d.rsplit("_", 1)[1]))
    if not fold_dirs:
        parser.error(f"--folds {args.folds}: no fold_<i>/ folders in it")
    rows, first_model = [], None
    for i, fold_dir in enumerate(fold_dirs):
        start = time.perf_counter()
        parts = [load_split(fold_dir, s, args.bins, args.channels, args.features)
                 for s in ("train", "valid")]
        x_fit = np.concatenate([p[0] for p in parts])
        y_fit = np.concatenate([p[1] for p in parts])
        x_test, y_test = load_split(fold_dir, "test", args.bins, args.channels, args.features)
        model = fit(x_fit, y_fit, args.C)
        first_model = first_model or model
        row = evaluate(model, x_test, y_test)
        rows.append(row)
        print(f"fold {i}: train {len(y_fit)} test {len(y_test)}  AUC {row['roc_auc']:.3f}  "
              f"acc {row['accuracy']:.3f}  ({time.perf_counter() - start:.1f} s)", flush=True)
    for key in ("roc_auc", "accuracy"):
        values = np.array([r[key] for r in rows])
        spread = values.std(ddof=1) if len(values) > 1 else 0.0  # as kfold's results.md
        print(f"{key}: {values.mean():.3f} +- {spread:.3f} over {len(rows)} folds")
    for cross_dir in args.cross:
        x, y = load_split(cross_dir, "test", args.bins, args.channels, args.features)
        row = evaluate(first_model, x, y)
        print(f"cross {cross_dir} test ({len(y)}): AUC {row['roc_auc']:.3f}  "
              f"acc {row['accuracy']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
