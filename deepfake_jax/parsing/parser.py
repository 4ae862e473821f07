"""A trained face-parsing run as a function: restored once, images of any size in, label maps out.

    parser = FaceParser(workdir, checkpoint="latest")   # restores and compiles once
    labels = parser.parse(images_uint8_nhwc)             # int32 (N, H, W) at the input size
"""

from __future__ import annotations

import math
import os

import cv2
import jax
import numpy as np

from deepfake_jax import runs
from deepfake_jax.parsing import label_maps
from deepfake_jax.tasks import segmentation
from deepfake_jax.training import sharding


class FaceParser:
    """A trained face-parsing run, restored once; `parse` runs its jitted eval step.

    Images of any size are resized to the run's `input.image_size` (area filter down, linear
    up) and the label maps resized back (nearest), so labels match the input pixels.
    """

    def __init__(self, workdir: str, checkpoint: str = "latest", use_ema: bool | None = None,
                 batch_size: int = 16, devices: list | None = None):
        self.workdir = os.path.abspath(workdir)
        config = runs.load_run_config(self.workdir, checkpoint)
        if config.get("task", "classification") != "segmentation":
            raise ValueError(f"{self.workdir} is not a face-parsing run (config.task = "
                             f"{config.get('task', 'classification')!r})")
        self.config = config
        self.image_size = int(config.input.image_size)
        self.num_classes = int(config.num_classes)
        self.mesh = sharding.make_mesh(None, devices=jax.local_devices() if devices is None
                                       else devices)
        n = self.mesh.shape[sharding.DATA_AXIS]
        self.batch_size = max(1, math.ceil(max(1, int(batch_size)) / n)) * n
        graphdef, self.state, self.step = runs.restore_weights(config, self.workdir,
                                                                 checkpoint, self.mesh)
        use_ema = bool(config.eval.use_ema) if use_ema is None else bool(use_ema)
        evals = segmentation.make_eval_steps(config, self.mesh, graphdef,
                                          jax.tree.map(lambda x: x.sharding, self.state))
        self._eval = evals[use_ema]

    def _model_view(self, image: np.ndarray) -> np.ndarray:
        s = self.image_size
        if image.shape[:2] == (s, s):
            return image
        interp = cv2.INTER_AREA if min(image.shape[:2]) > s else cv2.INTER_LINEAR
        return cv2.resize(image, (s, s), interpolation=interp)

    def parse(self, images: np.ndarray | list[np.ndarray]) -> np.ndarray:
        """uint8 RGB (N, H, W, 3) (or a list of same-sized images) -> int32 (N, H, W) labels."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 RGB images (N, H, W, 3), got shape {images.shape}")
        if images.dtype != np.uint8:
            raise ValueError(f"expected uint8 images, got {images.dtype}")
        out = np.zeros(images.shape[:3], np.int32)
        h, w = images.shape[1:3]
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            batch = np.zeros((self.batch_size, self.image_size, self.image_size, 3), np.uint8)
            batch[:len(chunk)] = [self._model_view(im) for im in chunk]
            arr = sharding.host_to_global(self.mesh, {"image": batch})
            labels = np.asarray(self._eval(self.state, arr))[:len(chunk)]  # padding dropped
            for k, lab in enumerate(labels):
                if (h, w) != lab.shape:
                    lab = label_maps.resize_labels(lab, (w, h))
                out[start + k] = lab
        return out
