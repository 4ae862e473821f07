"""BiSeNet training-step cost on this machine's CPU: OHEM by sorting vs by counting, and the
CPU recipe's variants side by side (ms per step, table).

    python bench/bisenet_train_step.py [--batch 16] [--repeats 5] [--rows default]

Each row jits one forward + backward pass of the face-parsing loss (OHEM cross-entropy on the
main and both auxiliary outputs, as `tasks.segmentation.train_step`) on random images and
labels, and
reports the median of `--repeats` timed calls (compile excluded). The OHEM rows compare the
reference's ``top_k`` over every pixel (its loss selects the hardest pixels by sorting) with
`losses.ohem_cross_entropy` (a bisection over float bit patterns: counting passes only),
once where more than `n_min` pixels are hard (threshold 0.7 on random logits: the mean of the
hard pixels is the loss) and once where few are (threshold 1e-9: the mean of the `n_min`
largest). The last quarter-width rows add the recipe's soft-IoU term on the main output, once
with its own softmax and once fused with the OHEM cross-entropy (`ohem_and_soft_jaccard`: one
log-softmax, one one-hot), the recipe's step. Machines are shared and noisy: note the load
average printed with the table.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (label, variant, size, detail_stride, aux_at_input_size, ohem implementation, threshold,
#  soft-IoU term: None / "apart" (its own softmax) / "fused" (`ohem_and_soft_jaccard`), upsample)
ROWS = {
    "default": [
        ("tiny, top_k OHEM, many hard", "tiny", 256, 8, True, "top_k", 0.7),
        ("tiny, counting OHEM, many hard", "tiny", 256, 8, True, "count", 0.7),
        ("tiny, top_k OHEM, few hard", "tiny", 256, 8, True, "top_k", 1e-9),
        ("tiny, counting OHEM, few hard", "tiny", 256, 8, True, "count", 1e-9),
        ("resnet18 (reference), 128 px", "resnet18", 128, 8, True, "count", 0.7),
        ("quarter, 128 px", "quarter", 128, 8, True, "count", 0.7),
        ("quarter + detail_stride 2, 128 px", "quarter", 128, 2, True, "count", 0.7),
        ("  + aux losses on own grids", "quarter", 128, 2, False, "count", 0.7),
        ("  + soft-IoU term apart (previous)", "quarter", 128, 2, False, "count", 0.7, "apart"),
        ("  + soft-IoU fused, conv_grid (recipe)", "quarter", 128, 2, False, "count", 0.7,
         "fused", "conv_grid"),
        ("quarter + detail_stride 2, 256 px", "quarter", 256, 2, True, "count", 0.7),
    ],
}


def ohem_top_k(logits, labels, *, thresh, min_kept_fraction):
    """The previous implementation (face-parsing.PyTorch's ``OhemCELoss`` rule via top_k)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    logits = logits.astype(jnp.float32).reshape(-1, logits.shape[-1])
    labels = labels.reshape(-1)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    n_min = int(loss.shape[0] * min_kept_fraction)
    cut = float(-np.log(thresh))
    hard = loss > cut
    mean_hard = jnp.sum(jnp.where(hard, loss, 0.0)) / jnp.maximum(jnp.sum(hard), 1)
    top = jax.lax.top_k(loss, n_min + 1)[0]
    return jnp.where(top[-1] > cut, mean_hard, jnp.mean(top[:n_min]))


def resize_dense_matrix(x, size):
    """The previous final upsampling: two dense interpolation matrices (a matmul with every
    input row/column per output pixel)."""
    import jax.numpy as jnp

    from deepfake_jax.models.bisenet import align_corners_matrix

    mh = jnp.asarray(align_corners_matrix(x.shape[1], size[0]), x.dtype)
    mw = jnp.asarray(align_corners_matrix(x.shape[2], size[1]), x.dtype)
    return jnp.einsum("wW,nhWc->nhwc", mw, jnp.einsum("hH,nHWc->nhWc", mh, x))


def measure_resize(impl, in_size, out_size, batch, repeats):
    """(forward, forward + backward) seconds of one align_corners bilinear resize of
    (batch, in_size, in_size, 19) logits to out_size, medians."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from deepfake_jax.models.bisenet import bilinear_resize_align_corners

    fn = resize_dense_matrix if impl == "dense" else bilinear_resize_align_corners
    x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, in_size, in_size, 19)),
                    jnp.float32)
    fwd = jax.jit(lambda v: fn(v, (out_size, out_size)))
    both = jax.jit(jax.grad(lambda v: jnp.sum(fn(v, (out_size, out_size)) ** 2)))
    out = []
    for f in (fwd, both):
        jax.block_until_ready(f(x))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(f(x))
            times.append(time.perf_counter() - t0)
        out.append(statistics.median(times))
    return out


def measure(variant, size, detail_stride, aux_at_input_size, ohem, thresh, jaccard=None,
            upsample="align_corners", *, batch, repeats):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from deepfake_jax.models.bisenet import BiSeNet
    from deepfake_jax.parsing import losses
    from deepfake_jax.tasks.segmentation import subsample_labels

    model = BiSeNet(variant, 19, rngs=nnx.Rngs(0), detail_stride=detail_stride,
                    upsample=upsample)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, size, size, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 19, (batch, size, size)))
    impl = ohem_top_k if ohem == "top_k" else losses.ohem_cross_entropy
    loss_of = functools.partial(impl, thresh=thresh, min_kept_fraction=1 / 16)

    @jax.jit
    @jax.value_and_grad
    def step(params, rest):
        out, *aux = nnx.merge(graphdef, params, rest).all_heads(
            x, train=True, aux_at_input_size=aux_at_input_size)
        loss = sum(loss_of(h, subsample_labels(y, h.shape[1:3])) for h in aux)
        if jaccard == "fused":
            return loss + sum(losses.ohem_and_soft_jaccard(
                out, y, thresh=thresh, min_kept_fraction=1 / 16))
        loss = loss + loss_of(out, y)
        return loss + (losses.soft_jaccard_loss(out, y) if jaccard == "apart" else 0.0)

    jax.block_until_ready(step(params, rest))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(step(params, rest))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rows", default="default", choices=sorted(ROWS))
    args = p.parse_args(argv)
    print(f"load average {os.getloadavg()[0]:.2f}; batch {args.batch}; forward + backward, "
          f"median of {args.repeats}")
    print(f"| {'row':40s} | ms/step | images/s |")
    print(f"|{'-' * 42}|--------:|---------:|")
    for label, *spec in ROWS[args.rows]:
        seconds = measure(*spec, batch=args.batch, repeats=args.repeats)
        print(f"| {label:40s} | {seconds * 1e3:7.0f} | {args.batch / seconds:8.1f} |", flush=True)
    print(f"\nbilinear resize (align_corners) of {args.batch} x 19-class logits, ms, median of "
          f"{args.repeats}")
    print("| resize        | implementation                | forward | fwd + bwd |")
    print("|---------------|-------------------------------|--------:|----------:|")
    for in_size, out_size in ((64, 128), (128, 256), (32, 256)):
        for impl, name in (("dense", "dense matrices (previous)"),
                           ("taps", "bilinear_resize_align_corners")):
            fwd, both = measure_resize(impl, in_size, out_size, args.batch, args.repeats)
            print(f"| {in_size:3d} -> {out_size:3d} px | {name:29s} | {fwd * 1e3:7.1f} | "
                  f"{both * 1e3:9.1f} |", flush=True)


if __name__ == "__main__":
    main()
