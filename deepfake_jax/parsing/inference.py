"""Face-parsing inference views: sliding windows, flip averaging, multi-scale averaging."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from deepfake_jax.parsing.classes import FLIP_PERMUTATION


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Offsets of `window`-pixel windows every `stride` pixels along a side of `size` pixels;
    the last window ends at the border (one window at 0 if it covers the side)."""
    if window <= 0 or stride <= 0:
        raise ValueError(f"window and stride must be positive, got {window} and {stride}")
    if window >= size:
        return [0]
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def sliding_window_probs(logits_fn, images: jax.Array, window: int, stride: int) -> jax.Array:
    """Class probabilities (N, H, W, C) averaged over overlapping square windows.

    The network sees inputs like its training crops, and each pixel's prediction is the mean
    of the softmax of every window that contains it (mmsegmentation's "slide" inference).
    """
    n, h, w = images.shape[:3]
    wh, ww = min(window, h), min(window, w)
    count = np.zeros((1, h, w, 1), np.float32)
    total = None
    for y in window_starts(h, window, stride):
        for x in window_starts(w, window, stride):
            probs = jax.nn.softmax(logits_fn(images[:, y:y + wh, x:x + ww]).astype(jnp.float32),
                                   axis=-1)
            if total is None:
                total = jnp.zeros((n, h, w, probs.shape[-1]), jnp.float32)
            total = total.at[:, y:y + wh, x:x + ww].add(probs)
            count[:, y:y + wh, x:x + ww] += 1.0
    return total / count


def flip_averaged(probs_fn, images: jax.Array) -> jax.Array:
    """Mean of `probs_fn` on the images and on their mirror images; the mirror's l_/r_ class
    channels are swapped back (`FLIP_PERMUTATION`)."""
    probs = probs_fn(images)
    mirrored = _mirror(probs_fn(_mirror(images)))
    perm = FLIP_PERMUTATION[:probs.shape[-1]].astype(np.int32)
    return (probs + mirrored[..., perm]) / 2.0


def scaled_size(size: int, scale: float, multiple: int = 32) -> int:
    """`size * scale` rounded to the nearest positive multiple of `multiple` (BiSeNet's input
    rule)."""
    return max(multiple, int(round(size * scale / multiple)) * multiple)


def multiscale_averaged(probs_fn, images: jax.Array, scales: tuple[float, ...],
                        multiple: int = 32) -> jax.Array:
    """Mean of `probs_fn` over input scales: the images resized by each scale (sides rounded to
    a multiple of `multiple`), `probs_fn` there, its probabilities resized back to the input.

    Linear resizing on pixel centres (`jax.image.resize`, antialiased when shrinking) both ways,
    the geometry of the training scale augmentation (`cv2.INTER_LINEAR` / `INTER_AREA`).
    At 1.25x the face's 1-3-pixel parts (glasses frames, brows) are wider on the network's
    stride-2 prediction grid.
    """
    n, h, w, c = images.shape
    total = None
    for scale in scales:
        size = (scaled_size(h, scale, multiple), scaled_size(w, scale, multiple))
        x = images if size == (h, w) else jax.image.resize(images, (n, *size, c), "linear")
        probs = probs_fn(x)
        if size != (h, w):
            probs = jax.image.resize(probs, (n, h, w, probs.shape[-1]), "linear")
        total = probs if total is None else total + probs
    return total / len(scales)


def _mirror(x: jax.Array) -> jax.Array:
    # A gather, not x[:, :, ::-1]: with a reverse, XLA's CPU algebraic simplifier aborted the
    # process compiling the jitted eval step ("Invalid binary instruction opcode map", jaxlib
    # 0.10.2, the test suite's 8 CPU devices at optimisation level 0).
    return jnp.take(x, np.arange(x.shape[2] - 1, -1, -1), axis=2)
