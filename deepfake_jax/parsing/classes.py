"""Face-parsing classes: names, label values, the flip permutation, colours and cropped regions.

Index = label value in every label map this project writes or reads (CelebAMask-HQ part names,
the order of zllrunning/face-parsing.PyTorch, whose BiSeNet checkpoint `weights/bisenet.py`
reads)::

     0 background   1 skin     2 l_brow   3 r_brow   4 l_eye   5 r_eye   6 eye_g
     7 l_ear        8 r_ear    9 ear_r   10 nose    11 mouth  12 u_lip  13 l_lip
    14 neck        15 neck_l  16 cloth   17 hair    18 hat

``l_``/``r_`` are the SUBJECT's left/right, so a horizontal flip swaps them
(``FLIP_PERMUTATION``). ``IGNORE_LABEL`` (255) marks pixels no loss or metric counts.
"""

from __future__ import annotations

import numpy as np

PARSING_CLASSES: tuple[str, ...] = (
    "background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear",
    "ear_r", "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat",
)


NUM_CLASSES = len(PARSING_CLASSES)


CLASS_INDEX = {name: i for i, name in enumerate(PARSING_CLASSES)}


IGNORE_LABEL = 255


_PAIRS = (("l_brow", "r_brow"), ("l_eye", "r_eye"), ("l_ear", "r_ear"))


FLIP_PERMUTATION = np.arange(256, dtype=np.uint8)  # label lookup table for a horizontal flip


for _a, _b in _PAIRS:
    FLIP_PERMUTATION[CLASS_INDEX[_a]], FLIP_PERMUTATION[CLASS_INDEX[_b]] = (
        CLASS_INDEX[_b], CLASS_INDEX[_a])


# Colours of face-parsing.PyTorch's visualisation (class i -> part_colors[i]), background black.
PALETTE = np.array([
    [0, 0, 0], [255, 85, 0], [255, 170, 0], [255, 0, 85], [255, 0, 170], [0, 255, 0],
    [85, 255, 0], [170, 255, 0], [0, 255, 85], [0, 255, 170], [0, 0, 255], [85, 0, 255],
    [170, 0, 255], [0, 85, 255], [0, 170, 255], [255, 255, 0], [255, 255, 85],
    [255, 255, 170], [255, 0, 255],
], np.uint8)


# Regions cropped by the `segment` CLI: name -> the classes it is made of.
REGIONS: dict[str, tuple[str, ...]] = {
    "left_eye": ("l_eye",),
    "right_eye": ("r_eye",),
    "nose": ("nose",),
    "lips": ("u_lip", "l_lip", "mouth"),
}
