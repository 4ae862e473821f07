"""XLA:CPU convs and pools: lax / nnx vs the forms `models/layers.py` uses, per layer shape.

    python bench/cpu_convs.py [--batch 32] [--repeats 3] [--json PATH]

Per layer shape, forward and forward+gradient (both inputs) of:

* 3x3 convs: ResNet-50's stride-1 shapes, lax only: run the script once with
  `XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=+individual_convolution` (jaxlib's
  defaults) and once without (the project's flags, `deepfake_jax/xla_options.py`);
* 1x1 convs: `lax.conv_general_dilated` (what the models run) vs a matmul;
* depthwise convs: lax's grouped conv vs the shifted multiply-adds with autodiff's gradient
  (`_depthwise_forward` differentiated as is) vs with the written-out gradient
  (`depthwise_conv_shifted`, what the models run);
* 2x2 max-pools (the seed CNN's at 224 px and VGG-16's): `nnx.max_pool` vs
  `layers.max_pool_2x2` (the max of four strided slices).

The other convs are EfficientNet-Lite0's at 224 px.

The variants of a shape are timed in turn, repeat by repeat, so they share the machine's load;
medians in ms, summed over the network (a shape counted once per layer that has it). Run
with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, as training does
(deepfake_jax/training/huge_pages.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (map size, channels in, channels out, layers with this shape) of Lite0's 1x1 convs
POINTWISE = [(112, 32, 16, 1), (112, 16, 96, 1), (56, 96, 24, 1), (56, 24, 144, 2),
             (56, 144, 24, 1), (28, 144, 40, 1), (28, 40, 240, 2), (28, 240, 40, 1),
             (14, 240, 80, 1), (14, 80, 480, 3), (14, 480, 80, 2), (14, 480, 112, 1),
             (14, 112, 672, 3), (14, 672, 112, 2), (7, 672, 192, 1), (7, 192, 1152, 4),
             (7, 1152, 192, 3), (7, 1152, 320, 1), (7, 320, 1280, 1)]
# (map size, channels, kernel, stride, layers) of Lite0's depthwise convs
DEPTHWISE = [(112, 32, 3, 1, 1), (112, 96, 3, 2, 1), (56, 144, 3, 1, 1), (56, 144, 5, 2, 1),
             (28, 240, 5, 1, 1), (28, 240, 3, 2, 1), (14, 480, 3, 1, 2), (14, 480, 5, 1, 1),
             (14, 672, 5, 1, 2), (14, 672, 5, 2, 1), (7, 1152, 5, 1, 3), (7, 1152, 3, 1, 1)]

# (map size, channels in = out, layers) of ResNet-50's stride-1 3x3 convs
DENSE_3X3 = [(56, 64, 3), (28, 128, 3), (14, 256, 5), (7, 512, 2)]

# (map size, channels, layers) of the seed CNN's (224 px) and VGG-16's 2x2 max-pools
MAXPOOL = [(222, 32, 1), (109, 64, 1), (52, 128, 1),
           (224, 64, 1), (112, 128, 1), (56, 256, 1), (28, 512, 1), (14, 512, 1)]


def same_padding(size: int, k: int, s: int) -> tuple[int, int]:
    total = max((-(-size // s) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def variants(kind: str, shape):
    """name -> conv(x, w) for one layer shape, and the (x, w) shapes."""
    import jax.numpy as jnp
    from jax import lax

    from deepfake_jax.models import layers

    dn = ("NHWC", "HWIO", "NHWC")
    if kind == "maxpool":
        from flax import nnx

        size, c, _ = shape
        return {
            "nnx": lambda x, w: nnx.max_pool(x * w, (2, 2), strides=(2, 2), padding="VALID"),
            "slices_max": lambda x, w: layers.max_pool_2x2(x * w),
        }, (size, size, c), (c,)
    if kind == "3x3":
        size, c, _ = shape
        return {
            "lax": lambda x, w: lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                                         dimension_numbers=dn),
        }, (size, size, c), (3, 3, c, c)
    if kind == "1x1":
        size, cin, cout, _ = shape
        pads = ((0, 0), (0, 0))
        return {
            "lax": lambda x, w: lax.conv_general_dilated(x, w, (1, 1), pads,
                                                         dimension_numbers=dn),
            "matmul": lambda x, w: jnp.matmul(x, w.reshape(cin, cout)),
        }, (size, size, cin), (1, 1, cin, cout)
    size, c, k, s, _ = shape
    pads = (same_padding(size, k, s),) * 2
    return {
        "lax": lambda x, w: lax.conv_general_dilated(x, w, (s, s), pads, dimension_numbers=dn,
                                                     feature_group_count=c),
        "shifted_autodiff": lambda x, w: layers._depthwise_forward(x, w, (s, s), pads),
        "shifted": lambda x, w: layers.depthwise_conv_shifted(x, w, (s, s), pads),
    }, (size, size, c), (k, k, 1, c)


def bench_shape(kind: str, shape, batch: int, repeats: int) -> dict[str, float]:
    import jax
    import jax.numpy as jnp

    fns, x_shape, w_shape = variants(kind, shape)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, *x_shape)).astype(np.float32))
    w = jnp.asarray(rng.normal(size=w_shape).astype(np.float32) * 0.1)
    calls = {}
    for name, fn in fns.items():
        calls[f"{name} fwd"] = jax.jit(fn)
        calls[f"{name} grad"] = jax.jit(jax.grad(lambda x, w, fn=fn: jnp.sum(jnp.sin(fn(x, w))),
                                                 argnums=(0, 1)))
    for call in calls.values():
        jax.block_until_ready(call(x, w))  # compile
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(call(x, w))
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=os.path.join(tempfile.gettempdir(),
                                                       "deepfake_jax_bench_cpu_convs.json"))
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    totals: dict[str, dict[str, float]] = {"3x3": {}, "1x1": {}, "depthwise": {},
                                           "maxpool": {}}
    for kind, shapes in (("3x3", DENSE_3X3), ("1x1", POINTWISE), ("depthwise", DEPTHWISE),
                         ("maxpool", MAXPOOL)):
        for shape in shapes:
            medians = bench_shape(kind, shape, args.batch, args.repeats)
            print(f"{kind} {shape[:-1]} x{shape[-1]}: "
                  + ", ".join(f"{n} {v:.1f}" for n, v in medians.items()), flush=True)
            for name, ms in medians.items():
                totals[kind][name] = totals[kind].get(name, 0.0) + ms * shape[-1]
    load_after = os.getloadavg()[0]
    print(f"\nResNet-50's 3x3 convs, EfficientNet-Lite0's 1x1 and depthwise convs, the seed CNN's "
          f"and VGG-16's pools at 224 px, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, batch "
          f"{args.batch}, medians of "
          f"{args.repeats}, summed over its layers (ms); load average {load_before:.1f} -> "
          f"{load_after:.1f} on {os.cpu_count()} CPUs\n")
    print("| op | variant | forward ms | forward+grad ms | grad vs lax/nnx |")
    print("|---|---|---:|---:|---:|")
    for kind, total in totals.items():
        base = total.get("lax grad", total.get("nnx grad"))
        for name in dict.fromkeys(n.rsplit(" ", 1)[0] for n in total):
            print(f"| {kind} | {name} | {total[f'{name} fwd']:.0f} | "
                  f"{total[f'{name} grad']:.0f} | "
                  f"{base / total[f'{name} grad']:.2f}x |")
    result = dict(batch=args.batch, repeats=args.repeats, load=(load_before, load_after),
                  xla_flags=os.environ.get("XLA_FLAGS", ""),
                  totals_ms=totals)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\nwrote {args.json}")
    return result


if __name__ == "__main__":
    main()
