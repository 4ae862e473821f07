"""How much mean IoU the up-sampling geometry alone allows: perfect coarse predictions.

    python bench/parsing_upsampling_bound.py [--faces 100] [--size 256]

For generated faces (`data_prep.synthetic.render_face`, the CPU recipe's data), give each
feature of a stride-s map the true class fractions around the pixel it is centred on (a conv
with symmetric padding centres output i on pixel s * i; the window is the (2s - 1)-tap
triangle that linear interpolation between neighbouring features assumes), up-sample those
bilinearly to the image with BiSeNet's two rules and score the argmax against the labels.
"align_corners" (the reference, torch ``align_corners=True``) drifts from the conv grid by up
to s - 1 pixels across the map; "conv_grid" (`models.bisenet.conv_grid_matrix`) does not. The
gap is the mean IoU lost to geometry before any learning; the CPU recipe predicts at stride 2.
No timing: this is a bound, not a speed measurement.
"""

from __future__ import annotations

import argparse
import os
import sys

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    from data_prep import synthetic
    from deepfake_jax.models.bisenet import UPSAMPLING
    from deepfake_jax.parsing import classes, metrics

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--faces", type=int, default=100)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()

    labels = np.stack([synthetic.render_face(np.random.default_rng([7, i]), args.size)[1]
                       for i in range(args.faces)])
    num_classes = len(classes.PARSING_CLASSES)
    print(f"{args.faces} generated faces at {args.size} px: mean IoU of the true labels at the "
          "stride-s grid, up-sampled")
    print(f"{'stride':>6} | " + " | ".join(f"{mode:>13}" for mode in UPSAMPLING))
    for stride in (2, 4, 8):
        tri = np.convolve(np.ones(stride), np.ones(stride)).astype(np.float32)
        tri /= tri.sum()
        coarse = np.stack([
            cv2.sepFilter2D(np.eye(num_classes, dtype=np.float32)[lab], -1, tri, tri,
                            borderType=cv2.BORDER_REPLICATE)[::stride, ::stride]
            for lab in labels])
        cells = []
        for matrix in UPSAMPLING.values():
            m = matrix(coarse.shape[1], args.size).astype(np.float32)
            up = np.einsum("Hh,nhwc,Ww->nHWc", m, coarse, m, optimize=True)
            cm = metrics.confusion_matrix(labels, up.argmax(-1), num_classes)
            cells.append(metrics.segmentation_metrics(cm)["miou"])
        print(f"{stride:>6} | " + " | ".join(f"{v:>13.3f}" for v in cells))


if __name__ == "__main__":
    main()
