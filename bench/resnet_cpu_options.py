"""ResNet-50 on XLA:CPU: what each convolution/compiler option gives, measured in one process.

    python bench/resnet_cpu_options.py [--batch 8] [--repeats 3] [--mode fwd|train|both]
        [--variants baseline,nchw,...] [--no_torch]

Every variant is compiled first, then all variants (and the PyTorch reference) are timed in
turn, repeat by repeat, so that they share the machine's load; medians are printed as a
markdown table with the speed-up over `baseline` and the largest |logit difference| from it
(parity). XLA compiler options are set per executable (`jax.jit(..., compiler_options=...)`),
so no variant needs its own process. Variants:

  baseline       the models as they are (lax conv, im2col + matmul for <= 16 output positions)
  im2col_off     lax conv everywhere (threshold 0)
  im2col_49      im2col + matmul up to 49 output positions (ResNet-50's whole last stage)
  dot_1x1        1x1 convolutions as (strided slice +) matmul, others as baseline
  nchw           convs run as NCHW/OIHW (transposes around each conv; XLA may cancel them)
  bf16           bfloat16 compute, float32 parameters (flax dtype=bfloat16)
  fast_math      --xla_cpu_enable_fast_math
  ynn_conv_off   YNNPACK for dots only (XLA's own/Eigen convolutions)
  ynn_eltwise    YNNPACK convolutions + dots + elementwise fusions (bias/ReLU epilogues)
  xnn_greedy     XNNPACK graph fusion mode GREEDY
  bn_fold        (forward only) BatchNorm folded into the conv kernels: conv + bias
  bn_fold_ynn_eltwise  (forward only) bn_fold with ynn_eltwise's compiler options
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

YNN = "xla_cpu_experimental_ynn_fusion_type"
_T = "LIBRARY_FUSION_TYPE_"

# name -> (model/trace options, XLA compiler options)
VARIANTS: dict[str, tuple[dict, dict]] = {
    "baseline": ({}, {}),
    "im2col_off": ({"threshold": 0}, {}),
    "im2col_49": ({"threshold": 49}, {}),
    "dot_1x1": ({"conv": "dot_1x1"}, {}),
    "nchw": ({"conv": "nchw"}, {}),
    "bf16": ({"dtype": "bfloat16"}, {}),
    "fast_math": ({}, {"xla_cpu_enable_fast_math": True}),
    "ynn_conv_off": ({}, {YNN: f"{_T}INDIVIDUAL_DOT"}),
    "ynn_eltwise": ({}, {YNN: f"{_T}INDIVIDUAL_DOT,{_T}INDIVIDUAL_CONVOLUTION,{_T}ELTWISE"}),
    "xnn_greedy": ({}, {"xla_cpu_experimental_xnn_graph_fusion_mode":
                        "XNN_GRAPH_FUSION_MODE_GREEDY"}),
    "bn_fold": ({"bn_fold": True}, {}),
    "bn_fold_ynn_eltwise": ({"bn_fold": True},
                            {YNN: f"{_T}INDIVIDUAL_DOT,{_T}INDIVIDUAL_CONVOLUTION,{_T}ELTWISE"}),
}
FORWARD_ONLY = {"bn_fold", "bn_fold_ynn_eltwise"}


# ----------------------------------------------------------------------------- conv variants


def conv_nchw(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
              dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
    from jax import lax

    y = lax.conv_general_dilated(
        lhs.transpose(0, 3, 1, 2), rhs.transpose(3, 2, 0, 1), window_strides, padding,
        lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=("NCHW", "OIHW", "NCHW"), feature_group_count=feature_group_count,
        precision=precision, **kwargs)
    return y.transpose(0, 2, 3, 1)


def conv_dot_1x1(lhs, rhs, window_strides, padding, **kwargs):
    import jax.numpy as jnp

    if rhs.shape[:2] == (1, 1) and not isinstance(padding, str) \
            and all(p == (0, 0) for p in padding) and kwargs.get("feature_group_count", 1) == 1:
        sh, sw = window_strides
        return jnp.matmul(lhs[:, ::sh, ::sw, :], rhs[0, 0], precision=kwargs.get("precision"))
    return _ORIGINAL_CONV[0](lhs, rhs, window_strides, padding, **kwargs)


_ORIGINAL_CONV: list = []  # layers.cpu_friendly_conv before any patching


@contextlib.contextmanager
def model_options(opts: dict):
    """Patches the conv implementation / im2col threshold / BatchNorm for one variant."""
    from flax import nnx

    from deepfake_jax.models import layers

    if not _ORIGINAL_CONV:
        _ORIGINAL_CONV.append(layers.cpu_friendly_conv)
    saved = (layers.cpu_friendly_conv, layers._MAX_POSITIONS_FOR_MATMUL, nnx.BatchNorm.__call__)
    conv = {"nchw": conv_nchw, "dot_1x1": conv_dot_1x1}.get(opts.get("conv"))
    if conv is not None:
        layers.cpu_friendly_conv = conv
    if "threshold" in opts:
        layers._MAX_POSITIONS_FOR_MATMUL = opts["threshold"]
    if opts.get("bn_fold"):
        # Folded state: scale/mean/var live in the conv kernel, the BN keeps only a bias.
        nnx.BatchNorm.__call__ = lambda self, x, use_running_average=None, **kw: \
            x + self.bias.value.astype(x.dtype)
    try:
        yield
    finally:
        layers.cpu_friendly_conv, layers._MAX_POSITIONS_FOR_MATMUL, nnx.BatchNorm.__call__ = saved


def fold_batch_norm(params: dict, batch_stats: dict, eps: float = 1e-5) -> tuple[dict, dict]:
    """Folds every eval-mode BN into the bias-free conv before it (convK -> bnK,
    downsample_conv -> downsample_bn): kernel * s, bias - mean * s, s = scale/sqrt(var+eps)."""
    import jax.numpy as jnp

    def walk(p, s):
        p, s = dict(p), dict(s)
        for name in list(p):
            if not isinstance(p[name], dict):
                continue
            bn = str(name).replace("conv", "bn")
            if "kernel" in p[name] and bn != str(name) and bn in p:
                scale = p[bn]["scale"] / jnp.sqrt(s[bn]["var"] + eps)
                p[name] = dict(p[name], kernel=p[name]["kernel"] * scale)
                p[bn] = dict(p[bn], bias=p[bn]["bias"] - s[bn]["mean"] * scale)
            elif name in s:
                p[name], s[name] = walk(p[name], s[name])
        return p, s

    return walk(params, batch_stats)


# ----------------------------------------------------------------------------- one variant


def build_variant(name: str, batch: int, mode: str, data: dict):
    """Compiled (forward, train_step, state holder) of ResNet-50 under variant `name`."""
    import jax
    import jax.numpy as jnp

    from configs import default
    from deepfake_jax.data import normalization
    from deepfake_jax.tasks import classification
    from deepfake_jax.training import optim, sharding, train_state

    opts, compiler_options = VARIANTS[name]
    config = default.get_config()
    config.model_name, config.num_classes = "resnet", 1000
    config.model = {"variant": "50"}
    if opts.get("dtype") == "bfloat16":
        config.model = {"variant": "50", "dtype": jnp.bfloat16}
    config.input.batch_size = batch
    mesh = sharding.make_mesh(None, devices=jax.devices()[:1])
    tx, schedule = optim.build_optimizer(config.optimizer, 1000)
    with model_options(opts):
        graphdef, state, _ = train_state.create_train_state(config, mesh, tx)
        # Non-trivial BN statistics (as after training), the same for every variant.
        rng = np.random.default_rng(1)
        stats = jax.tree.map(
            lambda v: jnp.asarray(rng.uniform(0.5, 1.5, v.shape) if v.ndim else v, v.dtype),
            state.batch_stats)
        stats = jax.tree_util.tree_map_with_path(
            lambda path, v: v - 1.0 if "mean" in jax.tree_util.keystr(path) else v, stats)
        state = state.replace(batch_stats=stats)
        params = state.params
        if opts.get("bn_fold"):
            params, stats = fold_batch_norm(params, stats)

        def forward(params, batch_stats, images):
            from flax import nnx

            from deepfake_jax.data import normalization

            model = nnx.merge(graphdef, params, batch_stats)
            return model(normalization.normalize(images), train=False).astype(jnp.float32)

        fwd = jax.jit(forward, compiler_options=compiler_options or None).lower(
            params, stats, data["image"]).compile()
        step = None
        if mode != "fwd" and name not in FORWARD_ONLY:
            step = jax.jit(
                functools.partial(classification.train_step, graphdef=graphdef, tx=tx,
                                  schedule=schedule,
                                  ema_decay=0.99, mean=normalization.IMAGENET_MEAN,
                                  std=normalization.IMAGENET_STD),
                donate_argnums=(0,), compiler_options=compiler_options or None,
            ).lower(state, data).compile()
    holder = {"state": state}

    def run_fwd():
        return jax.block_until_ready(fwd(params, stats, data["image"]))

    def run_train():
        holder["state"], m = step(holder["state"], data)
        return jax.block_until_ready(m)

    return run_fwd, (run_train if step is not None else None)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mode", choices=("fwd", "train", "both"), default="both")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--no_torch", action="store_true")
    args = parser.parse_args(argv)
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    if "baseline" not in names:
        names.insert(0, "baseline")

    import jax

    from bench.models import interleaved_medians, torch_tasks

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    load0 = os.getloadavg()[0]
    rng = np.random.default_rng(0)
    data = {"image": jax.numpy.asarray(rng.integers(0, 256, (args.batch, 224, 224, 3),
                                                    dtype=np.uint8)),
            "label": jax.numpy.asarray(rng.integers(0, 1000, (args.batch,)).astype(np.int32))}
    fwd_tasks, train_tasks, logits = {}, {}, {}
    for name in names:
        t0 = time.perf_counter()
        run_fwd, run_train = build_variant(name, args.batch, args.mode, data)
        logits[name] = np.asarray(run_fwd())
        if args.mode != "train":
            fwd_tasks[name] = run_fwd
        if run_train is not None:
            train_tasks[name] = run_train
        log(f"compiled {name} in {time.perf_counter() - t0:.0f} s")
    if not args.no_torch:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        for fmt in ("channels_last", "contiguous"):
            tf, tt = torch_tasks("resnet50", args.batch, "float32", fmt == "channels_last")
            if args.mode != "train":
                fwd_tasks[f"torch_{fmt}"] = tf
            if args.mode != "fwd":
                train_tasks[f"torch_{fmt}"] = tt
    results = {}
    for kind, tasks in (("forward", fwd_tasks), ("train step", train_tasks)):
        if tasks:
            log(f"timing {kind}: {', '.join(tasks)}")
            times = interleaved_medians(tasks, args.repeats, 1, log)
            results[kind] = {n: args.batch / statistics.median(t) for n, t in times.items()}
    load1 = os.getloadavg()[0]
    print(f"\nResNet-50, 224 px, batch {args.batch}, medians of {args.repeats}; load average "
          f"{load0:.1f} -> {load1:.1f} on {os.cpu_count()} CPUs\n")
    print("| variant | forward img/s | vs baseline | train img/s | vs baseline "
          "| max |logit diff| |")
    print("|---|---:|---:|---:|---:|---:|")
    fwd, trn = results.get("forward", {}), results.get("train step", {})
    for name in list(dict.fromkeys([*fwd, *trn])):
        f, t = fwd.get(name), trn.get(name)
        fs = f"{f:.1f} | {f / fwd['baseline']:.2f}x" if f and "baseline" in fwd else "– | –"
        ts = f"{t:.2f} | {t / trn['baseline']:.2f}x" if t and "baseline" in trn else "– | –"
        diff = (f"{np.max(np.abs(logits[name] - logits['baseline'])):.1e}" if name in logits
                else "–")
        print(f"| {name} | {fs} | {ts} | {diff} |")


if __name__ == "__main__":
    main()
