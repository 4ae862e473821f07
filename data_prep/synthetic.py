"""Deterministic synthetic face images in the folder layouts of real deepfake datasets.

Reals: a rendered face (`face_renderer`) + camera blur, white balance, noise and JPEG. Fakes
(140k style): the same face through a simulated generator decoder (random transposed-conv
upsampling; `difficulty` scales the trace). Fakes (CIPLab style): eyes / nose / mouth pasted
from another face. Every face has a 19-class label map. The RNG of every image is
`default_rng([seed, layout, split, class, i])`: equal arguments give byte-identical files.

    python -m data_prep.synthetic --output DIR [--layout 140k|ciplab] [--train N --valid N
        --test N] [--num_real N --num_fake N] [--image_size 64] [--difficulty 0.5] [--seed 0]
        [--masks] [--workers N] [--overwrite]

Details: docs/data_format.md (Module reference).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import zlib
from collections.abc import Callable, Iterable

import cv2
import numpy as np

from data_prep.face_drawing import draw_ellipse
from data_prep.face_renderer import render_face
from deepfake_jax import cli

SPLIT_IDS = {"train": 0, "valid": 1, "test": 2}


CLASS_IDS = {"real": 0, "fake": 1}


LAYOUT_IDS = {"140k": 0, "ciplab": 1}


CIPLAB_LEVELS = ("easy", "mid", "hard")


CIPLAB_PARTS = ("l_eye", "r_eye", "nose", "mouth")  # order of the 4 bits in CIPLab names


JPEG_QUALITY_RANGE = (80, 97)  # inclusive; identical for every class


TRACE_AMP_EASY = 0.6  # generator-trace amplitude at difficulty 0 ...


TRACE_AMP_HARD = 0.05  # ... and at difficulty 1 (geometric interpolation between)


# --------------------------------------------------------------------------------------------
# camera and generator simulation
# --------------------------------------------------------------------------------------------
def _camera(rng: np.random.Generator, img: np.ndarray, blur_sigma: float) -> np.ndarray:
    """Defocus blur (sigma in px), white balance jitter, read + shot noise -> uint8."""
    x = img.astype(np.float32)
    if blur_sigma > 0.05:
        x = cv2.GaussianBlur(x, (0, 0), blur_sigma)
    x *= rng.normal(1.0, 0.02, 3).astype(np.float32)
    read = rng.uniform(0.8, 3.0)
    shot = rng.uniform(0.0, 0.05)
    sd = np.sqrt(read * read + shot * np.clip(x, 0, 255))
    x += rng.standard_normal(x.shape, dtype=np.float32) * sd
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def _real_blur(rng: np.random.Generator) -> float:
    return float(rng.uniform(0.0, 1.0) if rng.random() < 0.85 else 0.0)


_BIL4 = np.outer([1, 3, 3, 1], [1, 3, 3, 1]).astype(np.float32) / 16.0 * 4.0  # sum 4


_SMOOTH3 = np.outer([1, 2, 1], [1, 2, 1]).astype(np.float32) / 16.0


def _tconv2(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Stride-2 transposed convolution of (h, w, 3) with a 4x4 kernel (zero insertion + conv)."""
    h, w = x.shape[:2]
    z = np.zeros((2 * h, 2 * w, 3), np.float32)
    z[::2, ::2] = x
    return cv2.filter2D(z, -1, k, borderType=cv2.BORDER_REFLECT_101)


def _random_kernel(rng: np.random.Generator, base: np.ndarray, amp: float) -> np.ndarray:
    """``base`` + zero-sum noise of relative size ``amp`` per tap (DC gain kept)."""
    noise = rng.standard_normal(base.shape).astype(np.float32) * (amp * float(base.mean()))
    return (base + noise - noise.mean()).astype(np.float32)


def _generator_trace(rng: np.random.Generator, clean: np.ndarray, difficulty: float) -> np.ndarray:
    """Simulated generator decoder. Returns a float32 image (before camera noise).

    The face is reduced by ``f`` (2 or 4) and upsampled with random stride-2 transposed
    convolutions (or nearest upsampling + a random 3x3 conv); a small fixed periodic pattern
    (the "bias fingerprint" of the upsampling layers) is added. The output is
    ``(1 - w) * clean + w * smooth_upsampled + amp(difficulty) * trace``.
    """
    S0 = clean.shape[0]
    x = clean.astype(np.float32)
    f = 4 if rng.random() < 0.3 else 2
    S = -(-S0 // f) * f  # pad odd sizes to a multiple of f, crop at the end
    if S != S0:
        x = cv2.copyMakeBorder(x, 0, S - S0, 0, S - S0, cv2.BORDER_REFLECT_101)
    low = cv2.resize(x, (S // f, S // f), interpolation=cv2.INTER_AREA)
    ref = cv2.resize(low, (S, S), interpolation=cv2.INTER_LINEAR)
    kamp = rng.uniform(0.02, 0.06)
    if rng.random() < 0.65:  # transposed convolutions
        up = low
        up_ref = low
        while up.shape[0] < S:
            k = _random_kernel(rng, _BIL4, kamp)
            up = _tconv2(up, k)
            up_ref = _tconv2(up_ref, _BIL4)
        resid = up - up_ref
    else:  # nearest upsampling + random 3x3 conv
        near = cv2.resize(low, (S, S), interpolation=cv2.INTER_NEAREST)
        smooth = cv2.filter2D(near, -1, _SMOOTH3, borderType=cv2.BORDER_REFLECT_101)
        k = _random_kernel(rng, _SMOOTH3, kamp * 3.0)
        resid = cv2.filter2D(near, -1, k, borderType=cv2.BORDER_REFLECT_101) - smooth
        resid += 0.5 * (smooth - ref)
    # additive periodic fingerprint of the upsampling stack (period 4, Nyquist damped)
    pat = rng.normal(0.0, 1.0, (4, 4, 1)) + rng.normal(0.0, 0.3, (4, 4, 3))
    pat = (pat + 0.5 * (np.roll(pat, 1, 0) + np.roll(pat, -1, 0))) / 2.0
    pat = (pat + 0.5 * (np.roll(pat, 1, 1) + np.roll(pat, -1, 1))) / 2.0
    pat = pat - pat.mean(axis=(0, 1), keepdims=True)
    pat *= rng.uniform(1.0, 2.5) / (pat.std() + 1e-6)
    resid += np.tile(pat.astype(np.float32), (-(-S // 4), -(-S // 4), 1))[:S, :S]
    w = rng.uniform(0.3, 1.0) if f == 2 else rng.uniform(0.15, 0.6)
    d = float(np.clip(difficulty, 0.0, 1.0))
    amp = TRACE_AMP_EASY ** (1.0 - d) * TRACE_AMP_HARD**d
    out = (1.0 - w) * x + w * ref + amp * resid
    out *= rng.normal(1.0, 0.01, 3).astype(np.float32)  # slight tone shift of the generator
    return np.ascontiguousarray(out[:S0, :S0])


def make_real(rng: np.random.Generator, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """A "real" photo: ``render_face`` + camera (defocus, noise). Returns (rgb uint8, labels)."""
    img, lab, _ = render_face(rng, image_size)
    return _camera(rng, img, _real_blur(rng)), lab


def make_fake(
    rng: np.random.Generator, image_size: int, difficulty: float
) -> tuple[np.ndarray, np.ndarray]:
    """A generated ("fake") face with decoder traces + the same camera noise as reals.

    ``difficulty`` in [0, 1]: 0 = strong periodic traces, 1 = faint. Returns (rgb uint8, labels).
    """
    img, lab, _ = render_face(rng, image_size)
    out = _generator_trace(rng, img, difficulty)
    return _camera(rng, out, 0.0), lab


def jpeg_quality(rng: np.random.Generator) -> int:
    return int(rng.integers(JPEG_QUALITY_RANGE[0], JPEG_QUALITY_RANGE[1] + 1))


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    )
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def _write_bytes(path: str, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)


def _write_png(path: str, lab: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", lab)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    _write_bytes(path, buf.tobytes())


# --------------------------------------------------------------------------------------------
# CIPLab-style region edits
# --------------------------------------------------------------------------------------------
def _expand(b, fx: float, fy: float, size: int):
    x0, y0, x1, y1 = b
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    hw, hh = max(x1 - x0, 2) * fx / 2, max(y1 - y0, 2) * fy / 2
    return (
        int(np.clip(round(cx - hw), 0, size - 1)),
        int(np.clip(round(cy - hh), 0, size - 1)),
        int(np.clip(round(cx + hw), 1, size)),
        int(np.clip(round(cy + hh), 1, size)),
    )


def make_ciplab_fake(
    rng: np.random.Generator, image_size: int, level: int, bits: Iterable[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Photoshop-style fake: regions (l_eye, r_eye, nose, mouth; ``bits``) of one face replaced
    by those of another face. ``level`` 0/1/2 = easy/mid/hard seam. Returns (rgb uint8, labels)
    after the camera model (same as reals)."""
    S = int(image_size)
    base, lab, info = render_face(rng, S)
    donor, dlab, dinfo = render_face(rng, S)
    d = (0.0, 0.5, 1.0)[int(level)]
    out = base.astype(np.float32)
    lab = lab.copy()
    grow = {"l_eye": (1.6, 2.4), "r_eye": (1.6, 2.4), "nose": (1.5, 1.25), "mouth": (1.35, 1.8)}
    for part, bit in zip(CIPLAB_PARTS, bits, strict=True):
        if not bit:
            continue
        bx0, by0, bx1, by1 = _expand(info[part], *grow[part], S)
        dx0, dy0, dx1, dy1 = _expand(dinfo[part], *grow[part], S)
        bw, bh = bx1 - bx0, by1 - by0
        if bw < 2 or bh < 2 or dx1 - dx0 < 2 or dy1 - dy0 < 2:
            continue
        patch = cv2.resize(
            donor[dy0:dy1, dx0:dx1].astype(np.float32), (bw, bh), interpolation=cv2.INTER_LINEAR
        )
        plab = cv2.resize(dlab[dy0:dy1, dx0:dx1], (bw, bh), interpolation=cv2.INTER_NEAREST)
        region = out[by0:by1, bx0:bx1]
        # colour matching: full at hard, none (plus a deliberate mismatch) at easy
        pm, ps = patch.reshape(-1, 3).mean(0), patch.reshape(-1, 3).std(0) + 1e-3
        rm, rs = region.reshape(-1, 3).mean(0), region.reshape(-1, 3).std(0) + 1e-3
        matched = (patch - pm) * (rs / ps) + rm
        cm = (0.0, 0.6, 1.0)[int(level)]
        patch = matched * cm + patch * (1.0 - cm)
        if level == 0:
            patch = patch * rng.uniform(0.85, 1.15) + rng.normal(0, 8, 3).astype(np.float32)
        mask = np.zeros((bh, bw), np.float32)
        if level == 0 and rng.random() < 0.5:
            mask[:] = 1.0
        else:
            draw_ellipse(mask, ((bw - 1) / 2, (bh - 1) / 2), (bw / 2 * 0.95, bh / 2 * 0.95), 0, 1.0)
        if d > 0:
            sig = d * 0.12 * min(bw, bh) + 0.3
            mask = (
                cv2.GaussianBlur(mask, (0, 0), sig) * (mask > 0)
                if level == 1
                else cv2.GaussianBlur(mask, (0, 0), sig)
            )
        out[by0:by1, bx0:bx1] = region * (1.0 - mask[..., None]) + patch * mask[..., None]
        lab[by0:by1, bx0:bx1] = np.where(mask > 0.5, plab, lab[by0:by1, bx0:bx1])
    return _camera(rng, np.clip(out, 0, 255), _real_blur(rng)), lab


# --------------------------------------------------------------------------------------------
# dataset writers
# --------------------------------------------------------------------------------------------
def _rng(seed: int, layout: str, group: int, cls: int, i: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), LAYOUT_IDS[layout], int(group), int(cls), int(i)])


def _split_id(split: str) -> int:
    return SPLIT_IDS.get(split, 100 + zlib.crc32(split.encode()) % 100000)


def _task_140k(args) -> None:
    out_dir, split, cls, i, size, difficulty, seed, masks = args
    rng = _rng(seed, "140k", _split_id(split), CLASS_IDS[cls], i)
    if cls == "real":
        img, lab = make_real(rng, size)
    else:
        img, lab = make_fake(rng, size, difficulty)
    stem = f"{split}_{cls}_{i:05d}"
    _write_bytes(
        os.path.join(out_dir, split, cls, stem + ".jpg"), encode_jpeg(img, jpeg_quality(rng))
    )
    if masks:
        _write_png(os.path.join(out_dir, split, cls + "_masks", stem + ".png"), lab)


def ciplab_name(level: int, idx: int, bits) -> str:
    return f"{CIPLAB_LEVELS[level]}_{idx:05d}_{''.join(str(int(b)) for b in bits)}"


def _task_ciplab(args) -> None:
    out_dir, cls, i, size, seed, masks = args
    rng = _rng(seed, "ciplab", 0, CLASS_IDS[cls], i)
    if cls == "real":
        img, lab = make_real(rng, size)
        stem, sub = f"real_{i:05d}", "training_real"
    else:
        level = int(rng.choice(3, p=[0.25, 0.5, 0.25]))
        bits = [0, 0, 0, 0]
        while not any(bits):
            bits = [int(b) for b in rng.random(4) < 0.45]
        img, lab = make_ciplab_fake(rng, size, level, bits)
        stem, sub = ciplab_name(level, i, bits), "training_fake"
    _write_bytes(os.path.join(out_dir, sub, stem + ".jpg"), encode_jpeg(img, jpeg_quality(rng)))
    if masks:
        _write_png(os.path.join(out_dir, sub + "_masks", stem + ".png"), lab)


def _worker_init() -> None:
    cv2.setNumThreads(1)


def _run_tasks(fn: Callable, tasks: list, num_workers: int, progress: bool, desc: str) -> None:
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), desc=desc, unit="img", file=sys.stderr)
    if num_workers <= 1 or len(tasks) < 2:
        n_threads = cv2.getNumThreads()
        cv2.setNumThreads(1)  # images are tiny: OpenCV threading only adds overhead
        try:
            for t in tasks:
                fn(t)
                if bar is not None:
                    bar.update(1)
        finally:
            cv2.setNumThreads(n_threads)
    else:
        import multiprocessing as mp

        # fork is fast and works from any __main__; spawn when the parent runs threads
        # (e.g. JAX imported), where forking is unsafe.
        import threading

        safe_fork = (
            sys.platform.startswith("linux")
            and threading.active_count() == 1
            and "jax" not in sys.modules
        )
        ctx = mp.get_context("fork" if safe_fork else "spawn")
        with ctx.Pool(int(num_workers), initializer=_worker_init) as pool:
            for _ in pool.imap_unordered(
                fn, tasks, chunksize=max(1, min(64, len(tasks) // (8 * num_workers)))
            ):
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()


def generate_140k(
    output_dir: str,
    counts: dict[str, int],
    image_size: int = 64,
    difficulty: float = 0.5,
    seed: int = 0,
    masks: bool = False,
    num_workers: int = 1,
    progress: bool = False,
) -> dict:
    """Writes ``<output_dir>/{split}/{real,fake}/<split>_<class>_<i:05d>.jpg`` with
    ``counts[split]`` images PER CLASS (``i`` from 0), e.g. ``{'train': 1000, 'valid': 200,
    'test': 200}``. With ``masks=True`` also ``<output_dir>/{split}/{real,fake}_masks/<stem>.png``
    label maps (``PARSING_CLASSES`` indices). Returns a summary dict."""
    t0 = time.perf_counter()
    tasks = []
    for split, n in counts.items():
        for cls in ("real", "fake"):
            os.makedirs(os.path.join(output_dir, split, cls), exist_ok=True)
            if masks:
                os.makedirs(os.path.join(output_dir, split, cls + "_masks"), exist_ok=True)
            tasks += [
                (
                    output_dir,
                    split,
                    cls,
                    i,
                    int(image_size),
                    float(difficulty),
                    int(seed),
                    bool(masks),
                )
                for i in range(int(n))
            ]
    _run_tasks(_task_140k, tasks, num_workers, progress, "140k")
    dt = time.perf_counter() - t0
    return {
        "layout": "140k",
        "output_dir": str(output_dir),
        "counts": {s: {"real": int(n), "fake": int(n)} for s, n in counts.items()},
        "total_images": len(tasks),
        "image_size": int(image_size),
        "difficulty": float(difficulty),
        "seed": int(seed),
        "masks": bool(masks),
        "seconds": dt,
        "images_per_second": len(tasks) / dt if dt > 0 else float("inf"),
    }


def generate_ciplab(
    output_dir: str,
    num_real: int,
    num_fake: int,
    image_size: int = 64,
    seed: int = 0,
    masks: bool = False,
    num_workers: int = 1,
    progress: bool = False,
) -> dict:
    """Writes ``<output_dir>/training_real/real_<id:05d>.jpg`` and
    ``<output_dir>/training_fake/{easy,mid,hard}_<id:05d>_<bits>.jpg`` (ids from 1, like the
    original dataset; bits = edited l_eye, r_eye, nose, mouth, at least one '1'). With
    ``masks=True`` label maps go to ``training_{real,fake}_masks/<stem>.png``."""
    t0 = time.perf_counter()
    for sub in ("training_real", "training_fake"):
        os.makedirs(os.path.join(output_dir, sub), exist_ok=True)
        if masks:
            os.makedirs(os.path.join(output_dir, sub + "_masks"), exist_ok=True)
    tasks = [
        (output_dir, "real", i, int(image_size), int(seed), bool(masks))
        for i in range(1, int(num_real) + 1)
    ]
    tasks += [
        (output_dir, "fake", i, int(image_size), int(seed), bool(masks))
        for i in range(1, int(num_fake) + 1)
    ]
    _run_tasks(_task_ciplab, tasks, num_workers, progress, "ciplab")
    levels = dict.fromkeys(CIPLAB_LEVELS, 0)
    fake_dir = os.path.join(output_dir, "training_fake")
    for name in os.listdir(fake_dir):
        lv = name.split("_", 1)[0]
        if lv in levels:
            levels[lv] += 1
    dt = time.perf_counter() - t0
    return {
        "layout": "ciplab",
        "output_dir": str(output_dir),
        "counts": {"real": int(num_real), "fake": int(num_fake), "fake_levels": levels},
        "total_images": len(tasks),
        "image_size": int(image_size),
        "seed": int(seed),
        "masks": bool(masks),
        "seconds": dt,
        "images_per_second": len(tasks) / dt if dt > 0 else float("inf"),
    }


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(
        prog="python -m data_prep.synthetic",
        description="Write a deterministic synthetic real/fake face dataset.",
    )
    p.add_argument("--output", required=True, help="output directory")
    p.add_argument("--layout", choices=sorted(LAYOUT_IDS), default="140k")
    p.add_argument("--train", type=int, default=1000, help="140k: images per class in train")
    p.add_argument("--valid", type=int, default=200, help="140k: images per class in valid")
    p.add_argument("--test", type=int, default=200, help="140k: images per class in test")
    p.add_argument("--num_real", type=int, default=1081, help="ciplab: real images")
    p.add_argument("--num_fake", type=int, default=960, help="ciplab: fake images")
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--difficulty", type=float, default=0.5, help="140k fakes: 0 easy .. 1 hard")
    p.add_argument("--seed", type=int, default=0)
    p.add_bool("masks", False, "also write face-parsing label maps")
    p.add_argument("--workers", type=int, default=1)
    p.add_bool("overwrite", False,
               "allow a non-empty output dir (the chosen layout's folders in it are replaced)")
    p.add_bool("progress", True, "show progress bars")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.image_size < 16:
        build_parser().error("--image_size must be >= 16")
    if not 0.0 <= args.difficulty <= 1.0:
        build_parser().error("--difficulty must be in [0, 1]")
    out = args.output
    if os.path.isdir(out) and os.listdir(out):
        if not args.overwrite:
            build_parser().error(
                f"output directory {out!r} is not empty; pass --overwrite to replace its "
                "dataset folders, or choose another --output"
            )
        subs = (
            ["train", "valid", "test"]
            if args.layout == "140k"
            else ["training_real", "training_fake", "training_real_masks", "training_fake_masks"]
        )
        for sub in subs:
            path = os.path.join(out, sub)
            if os.path.isdir(path):
                shutil.rmtree(path)
    elif os.path.exists(out) and not os.path.isdir(out):
        build_parser().error(f"--output {out!r} exists and is not a directory")
    os.makedirs(out, exist_ok=True)
    common = dict(
        image_size=args.image_size,
        seed=args.seed,
        masks=args.masks,
        num_workers=args.workers,
        progress=args.progress,
    )
    if args.layout == "140k":
        counts = {"train": args.train, "valid": args.valid, "test": args.test}
        summary = generate_140k(out, counts, difficulty=args.difficulty, **common)
    else:
        summary = generate_ciplab(out, args.num_real, args.num_fake, **common)
    print(
        f"wrote {summary['total_images']} images ({summary['layout']} layout, "
        f"{summary['image_size']} px) to {out} in {summary['seconds']:.1f} s "
        f"({summary['images_per_second']:.0f} img/s)"
    )
    print("counts:", summary["counts"])
    return summary


if __name__ == "__main__":
    main()
