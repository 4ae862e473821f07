"""Face-parsing records (image + label map) and their joint augmentation and batches.

A face-parsing dataset is a converted dataset (`records.py`: manifest.json + ArrayRecord shards)
whose records are msgpack maps with:

    image   bytes   the original encoded image file
    mask    bytes   the label map as an 8-bit single-channel PNG (values = class indices in
                    `segmentation.PARSING_CLASSES` order), any size (resized to the image's)
    path    str     source image path relative to the input root
    sha256  str     hex digest of `image`
    meta    map     layout-specific extras

Train view (`TrainTransform`): both resized to `image_size`, then the SAME random scale,
crop (padding: black image, IGNORE_LABEL labels) and horizontal flip applied to image and
label map (nearest neighbour for labels; a flip also swaps l_/r_ classes), then colour jitter on
the image only. Eval view: both resized to `image_size`. Batches: `image` uint8 NHWC,
`labels` uint8 NHW; eval batches also `index` (-1 = padding).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import cv2
import grain
import msgpack
import numpy as np

from deepfake_jax.data import input_pipeline, records
from deepfake_jax.data.image_io import decode_image_rgb
from deepfake_jax.parsing.classes import FLIP_PERMUTATION, IGNORE_LABEL
from deepfake_jax.parsing.label_maps import resize_labels


def encode_record(image: bytes, mask_png: bytes, path: str, sha256: str,
                  meta: dict[str, Any] | None = None) -> bytes:
    return msgpack.packb({"image": bytes(image), "mask": bytes(mask_png), "path": path,
                          "sha256": sha256, "meta": meta or {}}, use_bin_type=True)


def encode_label_png(label_map: np.ndarray) -> bytes:
    label_map = np.asarray(label_map)
    if label_map.ndim != 2 or label_map.min(initial=0) < 0 or label_map.max(initial=0) > 255:
        raise ValueError(f"a label map must be 2-D with values 0..255, got shape "
                         f"{label_map.shape}")
    ok, buf = cv2.imencode(".png", label_map.astype(np.uint8))
    if not ok:
        raise RuntimeError("PNG encoding of a label map failed")
    return buf.tobytes()


def decode_label_png(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """8-bit label PNG -> (H, W) uint8; a colour PNG is accepted if its channels are equal."""
    lab = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if lab is None:
        raise ValueError(f"cannot decode the label map of {source}")
    if lab.ndim == 3:
        if not (lab[..., :1] == lab[..., :3]).all():
            raise ValueError(f"label map of {source} is a colour image; expected class indices")
        lab = lab[..., 0]
    if lab.dtype != np.uint8:
        raise ValueError(f"label map of {source} has {lab.dtype} pixels; expected 8-bit")
    return lab


def decode_example(raw: bytes) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(image RGB uint8, label map uint8 at the image's size, record)."""
    record = records.decode_record(raw)
    path = record.get("path", "<record>")
    if "mask" not in record:
        raise ValueError(f"record {path} has no 'mask': this is not a face-parsing dataset "
                         "(convert with python -m data_prep.celebamask)")
    image = decode_image_rgb(record["image"], path)
    labels = decode_label_png(record["mask"], path)
    if labels.shape != image.shape[:2]:  # CelebAMask-HQ: 1024 px images, 512 px masks
        labels = resize_labels(labels, image.shape[1::-1])
    return image, labels, record


# ----------------------------------------------------------------------------- joint views


@dataclasses.dataclass(frozen=True)
class SegPreprocess:
    image_size: int  # both sides; images and labels are resized to it first
    crop_size: int  # train crop (== image_size: scale jitter only)
    scale_range: tuple[float, float] = (0.75, 1.25)
    flip_prob: float = 0.5
    color_jitter: float = 0.2  # max relative change of brightness, contrast, saturation

    @classmethod
    def from_config(cls, input_config: Any) -> SegPreprocess:
        size = int(input_config.image_size)
        return cls(
            image_size=size,
            crop_size=int(input_config.get("crop_size") or size),
            scale_range=tuple(float(v) for v in input_config.get("scale_range", (0.75, 1.25))),
            flip_prob=float(input_config.get("flip_prob", 0.5)),
            color_jitter=float(input_config.get("color_jitter", 0.2)),
        )


def resize_pair(image: np.ndarray, labels: np.ndarray, size: tuple[int, int]
                ) -> tuple[np.ndarray, np.ndarray]:
    """Resize to (height, width): area/linear filter for the image, nearest for labels."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image, labels
    interp = cv2.INTER_AREA if h < image.shape[0] else cv2.INTER_LINEAR
    return (cv2.resize(image, (w, h), interpolation=interp),
            resize_labels(labels, (w, h)))


def random_scale_crop(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                      scale_range: tuple[float, float], crop: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """One random scale and one `crop` window for both; padding is black / IGNORE_LABEL."""
    s = float(rng.uniform(*scale_range))
    h, w = image.shape[:2]
    image, labels = resize_pair(image, labels, (max(1, round(h * s)), max(1, round(w * s))))
    h, w = image.shape[:2]
    ph, pw = max(0, crop - h), max(0, crop - w)
    if ph or pw:  # pad at a random side so the face may sit anywhere in the crop
        top, left = int(rng.integers(0, ph + 1)), int(rng.integers(0, pw + 1))
        pads = ((top, ph - top), (left, pw - left))
        image = np.pad(image, pads + ((0, 0),))
        labels = np.pad(labels, pads, constant_values=IGNORE_LABEL)
        h, w = image.shape[:2]
    y = int(rng.integers(0, h - crop + 1))
    x = int(rng.integers(0, w - crop + 1))
    return image[y:y + crop, x:x + crop], labels[y:y + crop, x:x + crop]


def flip_pair(image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Horizontal flip; the subject's left becomes right, so l_/r_ labels swap."""
    return image[:, ::-1], FLIP_PERMUTATION[labels[:, ::-1]]


def color_jitter(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Random brightness, contrast and saturation factors in [1 - strength, 1 + strength]."""
    if strength <= 0:
        return image
    b, c, s = rng.uniform(1 - strength, 1 + strength, 3)
    x = image.astype(np.float32) * b
    x = (x - x.mean()) * c + x.mean()
    gray = x @ np.float32([0.299, 0.587, 0.114])
    x = (x - gray[..., None]) * s + gray[..., None]
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def train_view(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
               p: SegPreprocess) -> tuple[np.ndarray, np.ndarray]:
    image, labels = resize_pair(image, labels, (p.image_size, p.image_size))
    image, labels = random_scale_crop(image, labels, rng, p.scale_range, p.crop_size)
    if rng.random() < p.flip_prob:
        image, labels = flip_pair(image, labels)
    image = color_jitter(image, rng, p.color_jitter)
    return np.ascontiguousarray(image), np.ascontiguousarray(labels)


def eval_view(image: np.ndarray, labels: np.ndarray, p: SegPreprocess
              ) -> tuple[np.ndarray, np.ndarray]:
    image, labels = resize_pair(image, labels, (p.image_size, p.image_size))
    return np.ascontiguousarray(image), np.ascontiguousarray(labels)


class TrainTransform(grain.transforms.RandomMap):
    """For `input_pipeline.train_iterator(transform=...)`: (position, record) -> example."""

    def __init__(self, preprocess: SegPreprocess):
        self.preprocess = preprocess

    def random_map(self, element, rng: np.random.Generator) -> dict[str, np.ndarray]:
        raw = element[1] if isinstance(element, tuple) else element
        image, labels, _ = decode_example(raw)
        image, labels = train_view(image, labels, rng, self.preprocess)
        return {"image": image, "labels": labels}


def train_iterator(files: list[str], preprocess: SegPreprocess, global_batch_size: int,
                   seed: int, **kwargs) -> grain.DatasetIterator:
    """The classification pipeline's shuffle/repeat/shard/batch with the joint transform."""
    return input_pipeline.train_iterator(files, None, global_batch_size, seed,
                                         transform=TrainTransform(preprocess), **kwargs)


def eval_batches(files: list[str], preprocess: SegPreprocess, global_batch_size: int, *,
                 process_index: int = 0, process_count: int = 1
                 ) -> Iterator[dict[str, np.ndarray]]:
    """Every record once, this process's shard, equal-count padded batches (`index` -1 and
    IGNORE_LABEL labels for padding), like `input_pipeline.eval_batches`."""
    source = grain.sources.ArrayRecordDataSource(files)
    total = len(source)
    local_bs = global_batch_size // process_count
    mine = range(process_index, total, process_count)
    num_batches = math.ceil(math.ceil(total / process_count) / local_bs)
    size = preprocess.image_size
    for b in range(num_batches):
        batch = {"image": np.zeros((local_bs, size, size, 3), np.uint8),
                 "labels": np.full((local_bs, size, size), IGNORE_LABEL, np.uint8),
                 "index": np.full((local_bs,), -1, np.int32)}
        for k, i in enumerate(mine[b * local_bs:(b + 1) * local_bs]):
            image, labels, _ = decode_example(source[i])
            batch["image"][k], batch["labels"][k] = eval_view(image, labels, preprocess)
            batch["index"][k] = i
        yield batch


def read_example(files: list[str], index: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    return decode_example(grain.sources.ArrayRecordDataSource(files)[index])
