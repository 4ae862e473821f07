"""A model's train (or forward) step with the model code as it is vs earlier CPU forms, in one run.

    python bench/model_variants.py --model resnet50 --variants project,1x1_as_matmul
    python bench/model_variants.py --model vit_b16 --variants project,einsum_attention [--forward]

Each variant builds the trainer's real jitted step (`bench/models.py`'s `jax_tasks`: AdamW,
clipping, EMA; 224 px, 1000 classes) with one piece of the model code swapped back to an
earlier form, so a CPU rewrite in `models/` is kept only where it wins here:

* `1x1_as_matmul`: 1x1 convolutions as (strided slice +) matmul, as `layers.cpu_friendly_conv`
  ran them before the project set its XLA flags (`deepfake_jax/xla_options.py`);
* `einsum_attention`: ViT attention as two einsums with the scale on the logits;
* `softmax_then_values`: ViT's attention as `softmax(logits) @ v` (the division before the
  product with v);
* `reshape_max_pool`: `layers.max_pool_2x2` as a reshape + max (a reduction);
* `slices_max_pool`: `layers.max_pool_2x2` as the max of four strided slices with JAX's own
  gradient (ties shared);
* `lax_few_channel_convs`: convolutions of few input channels (RGB stems) by lax, not as a
  shifted sum (`layers._few_channel_conv`);
* `lax_pointwise_gradients`: 1x1 convs' gradients by lax's convolutions, not as matmuls
  (`layers._pointwise_conv`);
* `no_fusion_boundary`: the logits go straight into the softmax / loss
  (`layers.fusion_boundary` is the identity);
* `no_kernel_gradients` (a diagnosis, not a model): the convolutions' kernels get no gradient,
  so the step skips the kernel-gradient convolutions and the transposes XLA makes for them.

The variants are timed in turn, repeat by repeat, so they share the machine's load; medians.
Run on an idle machine with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, as training does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import models as model_bench  # noqa: E402 (bench/models.py)


@contextlib.contextmanager
def _swap(owner: str, attribute: str, make_replacement):
    """Sets `owner.attribute` to `make_replacement(current)` while the step is built and traced
    (`owner`: a module, or module:Class)."""
    import importlib

    module_name, _, class_name = owner.partition(":")
    target = importlib.import_module(module_name)
    if class_name:
        target = getattr(target, class_name)
    current = getattr(target, attribute)
    setattr(target, attribute, make_replacement(current))
    try:
        yield
    finally:
        setattr(target, attribute, current)


def _1x1_as_matmul(current):
    import jax.numpy as jnp

    def conv(lhs, rhs, window_strides, padding, *args, **kwargs):
        pointwise = rhs.shape[:2] == (1, 1) and all(p == (0, 0) for p in padding)
        if not pointwise or kwargs.get("feature_group_count", 1) != 1:
            return current(lhs, rhs, window_strides, padding, *args, **kwargs)
        sh, sw = window_strides
        return jnp.matmul(lhs[:, ::sh, ::sw, :], rhs.reshape(rhs.shape[2], rhs.shape[3]))

    return conv


def _no_kernel_gradients(current):
    import jax

    return lambda lhs, rhs, *args, **kwargs: current(lhs, jax.lax.stop_gradient(rhs), *args,
                                                     **kwargs)


def _einsum_attention(current):
    import jax
    import jax.numpy as jnp

    def call(self, x, *, train, rngs):
        b, t, _ = x.shape
        split = (b, t, self.num_heads, self.head_dim)
        q, k, v = (proj(x).reshape(split) for proj in (self.query, self.key, self.value))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * (self.head_dim ** -0.5)
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(x.dtype)
        dropped = self.attention_dropout(probs, deterministic=not train, rngs=rngs)
        out = jnp.einsum("bhqk,bkhd->bqhd", dropped, v).reshape(b, t, -1)
        return self.dropout(self.output(out), deterministic=not train, rngs=rngs), probs

    return call


def _softmax_then_values(current):
    import jax

    def attend(self, logits, v, *, train, rngs):
        probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        dropped = self.attention_dropout(probs, deterministic=not train, rngs=rngs)
        out = dropped @ v
        b, _, t, _ = out.shape
        return out.transpose(0, 2, 1, 3).reshape(b, t, -1)

    return attend


def _reshape_max_pool(current):
    import jax.numpy as jnp

    def pool(x):
        b, h, w, c = x.shape
        x = x[:, : h // 2 * 2, : w // 2 * 2, :].reshape(b, h // 2, 2, w // 2, 2, c)
        return jnp.max(x, axis=(2, 4))

    return pool


def _slices_max_pool(current):
    import jax.numpy as jnp

    def pool(x):
        h, w = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
        rows = [x[:, i:h:2, :w] for i in (0, 1)]
        return jnp.maximum(*(jnp.maximum(r[:, :, 0::2], r[:, :, 1::2]) for r in rows))

    return pool


_LAYERS = "deepfake_jax.models.layers"
VARIANTS = {
    "project": contextlib.nullcontext,
    "no_kernel_gradients": lambda: _swap(_LAYERS, "cpu_friendly_conv", _no_kernel_gradients),
    "1x1_as_matmul": lambda: _swap(_LAYERS, "cpu_friendly_conv", _1x1_as_matmul),
    "einsum_attention": lambda: _swap("deepfake_jax.models.vit:SelfAttention", "__call__",
                                      _einsum_attention),
    "softmax_then_values": lambda: _swap("deepfake_jax.models.vit:SelfAttention", "attend",
                                         _softmax_then_values),
    "reshape_max_pool": lambda: _swap(_LAYERS, "max_pool_2x2", _reshape_max_pool),
    "slices_max_pool": lambda: _swap(_LAYERS, "max_pool_2x2", _slices_max_pool),
    "lax_few_channel_convs": lambda: _swap(_LAYERS, "_MAX_TERMS_FOR_SHIFTED_SUM",
                                           lambda current: 0),
    "lax_pointwise_gradients": lambda: _swap(
        _LAYERS, "POINTWISE_GRADIENTS_AS_MATMULS", lambda current: False),
    "no_fusion_boundary": lambda: _swap(_LAYERS, "fusion_boundary", lambda current: lambda x: x),
}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50", choices=sorted(model_bench.MODELS))
    parser.add_argument("--variants", default="project,1x1_as_matmul")
    parser.add_argument("--forward", action="store_true", help="the eval step, not training")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=os.path.join(tempfile.gettempdir(),
                                                       "deepfake_jax_bench_model_variants.json"))
    args = parser.parse_args(argv)
    names = args.variants.split(",")
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    load_before = os.getloadavg()[0]
    steps = {}
    for name in names:
        with VARIANTS[name]():
            forward, train, _, _ = model_bench.jax_tasks(
                model_bench.MODELS[args.model], args.batch, "float32")
            step = forward if args.forward else train
            step()  # compiles while the variant is in place
        step()
        steps[name] = step
        print(f"{name}: compiled", flush=True)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
        print(f"round {r + 1}/{args.repeats}: "
              + ", ".join(f"{n} {ts[-1] * 1e3:.0f} ms" for n, ts in times.items()), flush=True)
    load_after = os.getloadavg()[0]
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    first = medians[names[0]]
    what = "forward" if args.forward else "train step"
    print(f"\n{args.model} {what}, batch {args.batch}, medians of {args.repeats}; load average "
          f"{load_before:.1f} -> {load_after:.1f} on {os.cpu_count()} CPUs\n")
    print(f"| variant | ms | img/s | speed vs {names[0]} |\n|---|---:|---:|---:|")
    for name, m in medians.items():
        print(f"| {name} | {m * 1e3:.0f} | {args.batch / m:.2f} | {first / m:.2f}x |")
    result = {"model": args.model, "task": what, "batch": args.batch, "repeats": args.repeats,
              "load_average": [load_before, load_after], "xla_flags": os.environ.get("XLA_FLAGS"),
              "seconds": times, "median_seconds": medians}
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"\nwrote {args.json}")
    return result


if __name__ == "__main__":
    main()
