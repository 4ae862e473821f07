"""Augmentation policies: the ops' settings, the presets, and the per-example pipeline.

Presets (`PRESETS`, chosen by `config.augment.preset`; random crop and the horizontal flip of
`config.input` always come first):

- "none": crop + flip only, bit-identical to the recipe without a `config.augment` block.
- "light": mild colour jitter, and Gaussian blur and JPEG re-compression each with
  probability 0.1, sigma ~ U[0, 3], quality ~ U{30..100}: Wang et al. 2020 ("CNN-generated
  images are surprisingly easy to spot... for now") "Blur+JPEG (0.1)", their best trade-off
  between clean accuracy and robustness to post-processing.
- "strong": their most robust setting, "Blur+JPEG (0.5)", plus colour jitter with hue,
  random grayscale, two photometric RandAugment ops (p 0.3), additive Gaussian noise and
  random erasing. No resampling ops (they blur the high-frequency traces a detector looks for):
  they are in `augment_ops.RANDAUGMENT_OPS` and `resized_crop` for whoever wants them.

`AugmentSchedule` switches from the `preset` to "strong" after `strong_after_epochs` epochs.
The ops themselves and their speed-ups: `augment_ops`; their cost: docs/benchmarks.md.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections
import numpy as np
from ml_collections import config_dict

from deepfake_jax.data import augment_ops


def _op_brightness(image, rng, factor):
    return augment_ops.adjust_brightness(image, rng.uniform(*factor))


def _op_contrast(image, rng, factor):
    return augment_ops.adjust_contrast(image, rng.uniform(*factor))


def _op_saturation(image, rng, factor):
    return augment_ops.adjust_saturation(image, rng.uniform(*factor))


def _op_hue(image, rng, shift):
    return augment_ops.adjust_hue(image, rng.uniform(*shift))


def _op_grayscale(image, rng):
    return augment_ops.to_grayscale(image)


def _op_blur(image, rng, sigma):
    return augment_ops.fast_gaussian_blur(image, rng.uniform(*sigma))


def _op_noise(image, rng, sigma):
    return augment_ops.add_gaussian_noise(image, rng.uniform(*sigma), rng)


def _op_jpeg(image, rng, quality):
    return augment_ops.jpeg_recompress(image, int(rng.integers(quality[0], quality[1] + 1)))


OPS: dict[str, Callable[..., np.ndarray]] = {
    "brightness": _op_brightness,
    "contrast": _op_contrast,
    "saturation": _op_saturation,
    "hue": _op_hue,
    "grayscale": _op_grayscale,
    "randaugment": augment_ops.rand_augment,
    "blur": _op_blur,
    "noise": _op_noise,
    "jpeg": _op_jpeg,
    "erasing": augment_ops.random_erase,
}


COLOR_OPS = ("brightness", "contrast", "saturation", "hue")  # fused into one colour matrix


# Every knob with its default (prob 0 = off). `resized_crop` replaces the random crop with
# that probability (it needs the crop size, so it is not in OPS).
OP_DEFAULTS: dict[str, dict[str, Any]] = {
    "resized_crop": dict(prob=0.0, scale=(0.25, 1.0), ratio=(3 / 4, 4 / 3)),
    "brightness": dict(prob=0.0, factor=(0.8, 1.2)),
    "contrast": dict(prob=0.0, factor=(0.8, 1.2)),
    "saturation": dict(prob=0.0, factor=(0.8, 1.2)),
    "hue": dict(prob=0.0, shift=(-0.05, 0.05)),  # turns of the colour wheel
    "grayscale": dict(prob=0.0),
    "randaugment": dict(prob=0.0, num_ops=2, magnitude=(0.0, 9.0),
                        ops=augment_ops.PHOTOMETRIC_RANDAUGMENT_OPS),
    "blur": dict(prob=0.0, sigma=(0.0, 3.0)),  # px
    "noise": dict(prob=0.0, sigma=(0.0, 0.03)),  # fraction of 255
    "jpeg": dict(prob=0.0, quality=(30, 100)),
    "erasing": dict(prob=0.0, area=(0.02, 0.2), ratio=(0.3, 3.3), fill="noise"),
}


PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "none": {},
    "light": {
        "brightness": dict(prob=0.3, factor=(0.9, 1.1)),
        "contrast": dict(prob=0.3, factor=(0.9, 1.1)),
        "saturation": dict(prob=0.3, factor=(0.9, 1.1)),
        "blur": dict(prob=0.1, sigma=(0.0, 3.0)),
        "jpeg": dict(prob=0.1, quality=(30, 100)),
    },
    "strong": {
        "brightness": dict(prob=0.5, factor=(0.7, 1.3)),
        "contrast": dict(prob=0.5, factor=(0.7, 1.3)),
        "saturation": dict(prob=0.5, factor=(0.7, 1.3)),
        "hue": dict(prob=0.3, shift=(-0.05, 0.05)),
        "grayscale": dict(prob=0.05),
        "randaugment": dict(prob=0.3, num_ops=2, magnitude=(0.0, 9.0),
                            ops=augment_ops.PHOTOMETRIC_RANDAUGMENT_OPS),
        "blur": dict(prob=0.5, sigma=(0.0, 3.0)),
        "noise": dict(prob=0.2, sigma=(0.0, 0.03)),
        "jpeg": dict(prob=0.5, quality=(30, 100)),
        "erasing": dict(prob=0.25, area=(0.02, 0.2), ratio=(0.3, 3.3), fill="noise"),
    },
}


def apply_op(name: str, image: np.ndarray, rng: np.random.Generator, **params) -> np.ndarray:
    """One op of `OPS` (always applied; `params` override its defaults, `prob` is ignored)."""
    if name not in OPS:
        raise ValueError(f"unknown augmentation op {name!r}; choose from {', '.join(OPS)}")
    kwargs = {k: v for k, v in (OP_DEFAULTS[name] | params).items() if k != "prob"}
    return OPS[name](image, rng, **kwargs)


def _validated(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    where = f"augment op {name!r}"
    if name not in OP_DEFAULTS:
        raise ValueError(f"unknown augment op {name!r}; choose from {', '.join(OP_DEFAULTS)}")
    unknown = set(params) - set(OP_DEFAULTS[name])
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {sorted(unknown)}; "
                         f"it takes {sorted(OP_DEFAULTS[name])}")
    out = dict(OP_DEFAULTS[name]) | dict(params)
    if not 0.0 <= float(out["prob"]) <= 1.0:
        raise ValueError(f"{where}: prob={out['prob']} is not in [0, 1]")
    for key, value in out.items():
        if isinstance(OP_DEFAULTS[name][key], tuple) and key != "ops":
            if len(value) != 2 or float(value[0]) > float(value[1]):
                raise ValueError(f"{where}: {key}={tuple(value)} must be a (low, high) range")
            out[key] = tuple(value)
    if name == "jpeg" and not 1 <= out["quality"][0] <= out["quality"][1] <= 100:
        raise ValueError(f"{where}: quality={out['quality']} must lie within 1..100")
    if name == "erasing" and out["fill"] not in ("noise", "gray"):
        raise ValueError(f"{where}: fill={out['fill']!r}; choose 'noise' or 'gray'")
    if name == "randaugment":
        bad = [op for op in out["ops"] if op not in augment_ops.RANDAUGMENT_OPS]
        if bad or not out["ops"]:
            raise ValueError(f"{where}: unknown ops {bad or '(empty list)'}; "
                             f"choose from {', '.join(augment_ops.RANDAUGMENT_OPS)}")
        out["ops"] = tuple(out["ops"])
    return out


@dataclasses.dataclass(frozen=True)
class AugmentPolicy:
    """Crop and flip, then the ops of `OPS` in table order, each with its probability."""

    # (name, settings) for the ops with prob > 0, in OPS order.
    ops: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    resized_crop: tuple[tuple[str, Any], ...] | None = None

    @classmethod
    def from_dict(cls, settings: Mapping[str, Mapping[str, Any]]) -> AugmentPolicy:
        checked = {name: _validated(name, params) for name, params in settings.items()}
        ops = tuple((name, tuple(checked[name].items())) for name in OPS
                    if name in checked and checked[name]["prob"] > 0)
        crop = checked.get("resized_crop")
        return cls(ops=ops, resized_crop=tuple(crop.items()) if crop and crop["prob"] > 0
                   else None)

    @classmethod
    def preset(cls, name: str, overrides: Mapping[str, Mapping[str, Any]] | None = None):
        if name not in PRESETS:
            raise ValueError(f"unknown augment preset {name!r}; choose from {', '.join(PRESETS)}")
        settings = {op: dict(p) for op, p in PRESETS[name].items()}
        for op, params in (overrides or {}).items():
            settings[op] = settings.get(op, {}) | dict(params)
        return cls.from_dict(settings)

    @functools.cached_property
    def _plan(self) -> tuple[tuple[str, float, dict[str, Any]], ...]:
        # (name, prob, kwargs) per op, built once instead of two dicts per op and image.
        return tuple((name, float(dict(params)["prob"]),
                      {k: v for k, v in params if k != "prob"}) for name, params in self.ops)

    @property
    def op_names(self) -> tuple[str, ...]:
        return (("resized_crop",) if self.resized_crop else ()) + tuple(n for n, _ in self.ops)

    def __call__(self, image: np.ndarray, rng: np.random.Generator, crop_size: int,
                 flip_prob: float = 0.5, resize_to: int | None = None) -> np.ndarray:
        if not self.ops and not self.resized_crop:  # the plain recipe, draw for draw
            return augment_ops.train_view(image, rng, crop_size, flip_prob, resize_to)
        if resize_to:
            image = augment_ops.resize_short_side(image, resize_to)
        crop = dict(self.resized_crop or ())
        if crop and rng.random() < crop["prob"]:
            image = augment_ops.random_resized_crop(image, crop_size, rng, crop["scale"],
                                                    crop["ratio"])
        else:
            image = augment_ops.random_crop(image, crop_size, rng)
        image = np.ascontiguousarray(augment_ops.random_flip(image, rng, flip_prob))
        color = None  # the fused colour-jitter matrix, applied before the first non-colour op
        for name, prob, params in self._plan:
            if rng.random() >= prob:
                continue
            if name in COLOR_OPS:
                color = _add_color_op(color, name, params, image, rng)
                continue
            if color is not None:
                image, color = augment_ops.apply_color_matrix(image, color), None
            image = OPS[name](image, rng, **params)
        if color is not None:
            image = augment_ops.apply_color_matrix(image, color)
        return image


def _add_color_op(matrix: np.ndarray | None, name: str, params: dict[str, Any],
                  image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if name == "brightness":
        step = augment_ops.brightness_matrix(rng.uniform(*params["factor"]))
    elif name == "contrast":
        # The grey mean of the image as the ops so far left it (before clipping).
        means = augment_ops.mean_rgb(image)
        if matrix is not None:
            means = matrix[:3, :3] @ means + matrix[:3, 3]
        step = augment_ops.contrast_matrix(rng.uniform(*params["factor"]),
                                           float(augment_ops.LUMA @ means))
    elif name == "saturation":
        step = augment_ops.saturation_matrix(rng.uniform(*params["factor"]))
    else:
        step = augment_ops.hue_matrix(rng.uniform(*params["shift"]))
    return step if matrix is None else step @ matrix


@dataclasses.dataclass(frozen=True)
class AugmentSchedule:
    """`before` for epochs < `switch_epoch`, then `after` (epochs count from 0)."""

    before: AugmentPolicy
    after: AugmentPolicy | None = None
    switch_epoch: int | None = None

    def policy_at(self, epoch: int) -> AugmentPolicy:
        if self.after is not None and epoch >= self.switch_epoch:
            return self.after
        return self.before

    @classmethod
    def from_config(cls, augment_config: Any) -> AugmentSchedule:
        """From `config.augment`: `preset`, optional `strong_after_epochs`, and optional
        per-preset blocks `light` / `strong` ({op: {prob, ranges}}) that override PRESETS."""
        cfg = _to_dict(augment_config)
        unknown = set(cfg) - {"preset", "strong_after_epochs", *PRESETS}
        if unknown:
            raise ValueError(f"config.augment: unknown key(s) {sorted(unknown)}; expected preset, "
                             f"strong_after_epochs and per-preset blocks {', '.join(PRESETS)}")
        name = cfg.get("preset") or "none"
        policy = lambda n: AugmentPolicy.preset(n, cfg.get(n))
        switch = cfg.get("strong_after_epochs")
        if switch is None:
            return cls(policy(name))
        if name == "strong" or int(switch) < 0:
            raise ValueError(f"config.augment.strong_after_epochs={switch} switches from the "
                             f"preset to 'strong': use preset 'none' or 'light' and N >= 0")
        return cls(policy(name), policy("strong"), int(switch))


def _to_dict(value: Any) -> dict[str, Any]:
    return value.to_dict() if hasattr(value, "to_dict") else dict(value)


def default_config(preset: str = "none") -> ml_collections.ConfigDict:
    """The `config.augment` block: the preset, the schedule, and every preset's knobs
    (`--config.augment.strong.jpeg.prob=0.3` edits one)."""
    config = ml_collections.ConfigDict({
        name: {op: dict(OP_DEFAULTS[op]) | dict(params) for op, params in ops.items()}
        for name, ops in PRESETS.items() if ops})
    config.preset = preset
    config.strong_after_epochs = config_dict.placeholder(int)  # light -> strong at this epoch
    return config
