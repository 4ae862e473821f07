"""Predict throughput on CPU: our inference paths vs PyTorch eval, ResNet-50 and ViT-B/16, 224 px.

    python bench/predict_throughput.py [--models resnet50,vit_b16] [--batch 16] [--repeats 5]
        [--latency_calls 15] [--paths jax_fp32,jax_bf16,exported_fp32,exported_bf16]
        [--json PATH] [--quick]

Per model (one-logit detector head, as `predict` scores p_fake), the same random uint8 images:

* `jax_fp32` / `jax_bf16`: the trainer's jitted eval step (`classification.make_eval_steps`) that
  `deepfake_jax.predict` runs, fed host arrays through `sharding.host_to_global` like predict's
  scorer; bf16 = the model built with `dtype=bfloat16` (float32 weights, bfloat16 compute).
* `exported_fp32` / `exported_bf16`: the serving artifact path: `export.serving_function`
  (weights baked in as constants) through `jax.export` with a symbolic batch, serialized,
  deserialized and called through `serving.ExportedDetector`, as `python -m
  deepfake_jax.export` + `serving.load_exported` do (skipped if those modules are missing).
* `torch_fp32` / `torch_bf16`: the PyTorch reference (`transformers`' ResNet / ViT) in eval
  mode under `torch.no_grad()`, channels_last for ResNet; bf16 via `torch.autocast`.

Throughput = images/s at `--batch` (median over `--repeats`); latency = median ms of one
image (batch 1) over `--latency_calls` calls. Compilation and first calls are excluded; all
paths are interleaved call by call so that they share the machine's load, each timed call
after one untimed call (`bench/models.py`'s `interleaved_medians`). Ratios are against
`torch_fp32`.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.models import MODELS, TORCH_BUILDERS, interleaved_medians  # noqa: E402

PREDICT_MODELS = ("resnet50", "vit_b16")
PATHS = ("jax_fp32", "jax_bf16", "exported_fp32", "exported_bf16", "torch_fp32", "torch_bf16")


def _jax_paths(key: str, dtypes: list[str], exported_dtypes: list[str]):
    """{path name: callable(uint8 images) -> p_fake} for the JAX paths of one model."""
    import jax
    import jax.numpy as jnp

    from configs import default
    from deepfake_jax.tasks import classification
    from deepfake_jax.training import optim, sharding, train_state

    spec = MODELS[key]
    out = {}
    for dtype in sorted(set(dtypes) | set(exported_dtypes)):
        config = default.get_config()
        config.model_name, config.num_classes = spec.family, 1
        kwargs = dict(spec.kwargs)
        if dtype == "bf16":
            kwargs["dtype"] = jnp.bfloat16
        config.model = kwargs
        mesh = sharding.make_mesh(None, devices=jax.devices()[:1])
        tx, _ = optim.build_optimizer(config.optimizer, 10)
        graphdef, state, shardings = train_state.create_train_state(config, mesh, tx)
        if dtype in dtypes:
            eval_fn = classification.make_eval_steps(config, mesh, graphdef, shardings)[False]

            def run(images, eval_fn=eval_fn, mesh=mesh, state=state):
                batch = sharding.host_to_global(mesh, {
                    "image": images, "label": np.zeros((len(images),), np.int32)})
                return np.asarray(eval_fn(state, batch))

            out[f"jax_{dtype}"] = run
        if dtype in exported_dtypes:
            out[f"exported_{dtype}"] = _exported_path(graphdef, state)
    return out


def _exported_path(graphdef, state):
    """The export -> serialize -> deserialize -> ExportedDetector round trip, in memory."""
    import jax
    import jax.numpy as jnp

    from deepfake_jax import export
    from deepfake_jax.data import normalization
    from deepfake_jax.inference import serving

    params, batch_stats = jax.device_get((state.params, state.batch_stats))
    serve = jax.jit(export.serving_function(graphdef, params, batch_stats,
                                            normalization.IMAGENET_MEAN,
                                            normalization.IMAGENET_STD))
    batch, = jax.export.symbolic_shape("batch")
    exported = jax.export.export(serve)(jax.ShapeDtypeStruct((batch, 224, 224, 3), jnp.uint8))
    blob = exported.serialize()
    detector = serving.ExportedDetector(jax.export.deserialize(blob), {"crop_size": 224})
    return detector


def _torch_path(key: str, bf16: bool):
    import torch

    torch.manual_seed(0)
    model = TORCH_BUILDERS[key](torch).eval()
    fmt = torch.channels_last if MODELS[key].convolutional else torch.contiguous_format
    model = model.to(memory_format=fmt)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def run(images):
        # Same work as our paths: uint8 NHWC -> normalised NCHW -> network -> probabilities.
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0)
            x = ((x - mean) / std).contiguous(memory_format=fmt)
            out = model(x)
            logits = out.logits if hasattr(out, "logits") else out
            return torch.softmax(logits.float(), -1).numpy()

    return run


def bench_model(key, args, log) -> dict:
    log(f"{MODELS[key].label}: building paths {', '.join(args.paths)}")
    t0 = time.perf_counter()
    have_export = True
    try:
        import deepfake_jax.export  # noqa: F401
        import deepfake_jax.inference.serving  # noqa: F401
    except ImportError:
        have_export = False
    dtypes = [p[4:] for p in args.paths if p.startswith("jax_")]
    exported = [p[9:] for p in args.paths if p.startswith("exported_")] if have_export else []
    paths = _jax_paths(key, dtypes, exported)
    for p in args.paths:
        if p.startswith("torch_"):
            paths[p] = _torch_path(key, p == "torch_bf16")
    paths = {p: paths[p] for p in args.paths if p in paths}
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (args.batch, 224, 224, 3), dtype=np.uint8)
    one = big[:1]
    for p, fn in paths.items():  # compile both shapes outside the timing
        t1 = time.perf_counter()
        fn(big)
        fn(one)
        log(f"  {p}: compiled / first calls {time.perf_counter() - t1:.1f} s")
    log(f"  built in {time.perf_counter() - t0:.1f} s; throughput at batch {args.batch}")
    thr = interleaved_medians({p: (lambda fn=fn: fn(big)) for p, fn in paths.items()},
                              args.repeats, 1, log)
    log("  batch-1 latency")
    lat = interleaved_medians({p: (lambda fn=fn: fn(one)) for p, fn in paths.items()},
                              args.latency_calls, 1, log)
    row = {"model": MODELS[key].label, "batch": args.batch, "paths": {}}
    for p in paths:
        row["paths"][p] = {"img_s": args.batch / statistics.median(thr[p]),
                           "latency_ms": 1e3 * statistics.median(lat[p]),
                           "seconds_per_batch": thr[p], "seconds_batch1": lat[p]}
    ref = row["paths"].get("torch_fp32")
    for r in row["paths"].values():
        r["img_s_vs_torch_fp32"] = r["img_s"] / ref["img_s"] if ref else None
        r["latency_speedup_vs_torch_fp32"] = ref["latency_ms"] / r["latency_ms"] if ref else None
    skipped = [p for p in args.paths if p not in paths]
    if skipped:
        row["skipped"] = skipped
        log(f"  skipped (deepfake_jax.export/serving missing): {', '.join(skipped)}")
    return row


def markdown_table(rows) -> str:
    lines = ["| model | path | img/s (batch) | vs torch fp32 | batch-1 latency ms "
             "| latency vs torch fp32 |", "|---|---|---:|---:|---:|---:|"]
    for row in rows:
        for p, r in row["paths"].items():
            vs = "–" if r["img_s_vs_torch_fp32"] is None else f"{r['img_s_vs_torch_fp32']:.2f}x"
            lv = "–" if r["latency_speedup_vs_torch_fp32"] is None else \
                f"{r['latency_speedup_vs_torch_fp32']:.2f}x"
            lines.append(f"| {row['model']} | {p} | {r['img_s']:.1f} ({row['batch']}) | {vs} "
                         f"| {r['latency_ms']:.0f} | {lv} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(PREDICT_MODELS))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--latency_calls", type=int, default=15)
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--json", default=os.path.join(tempfile.gettempdir(),
                                                       "deepfake_jax_bench_predict.json"))
    parser.add_argument("--quick", action="store_true",
                        help="ResNet-50 only, batch 2, 1 repeat, 2 latency calls")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.repeats, args.latency_calls = 2, 1, 2
        if args.models == parser.get_default("models"):
            args.models = "resnet50"
    args.models = [m for m in args.models.split(",") if m]
    args.paths = [p for p in args.paths.split(",") if p]
    bad = [m for m in args.models if m not in PREDICT_MODELS] + \
        [p for p in args.paths if p not in PATHS]
    if bad:
        parser.error(f"unknown {', '.join(bad)}; models: {', '.join(PREDICT_MODELS)}; "
                     f"paths: {', '.join(PATHS)}")

    import jax
    import torch

    torch.set_num_threads(os.cpu_count() or 1)

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    load0 = os.getloadavg()[0]
    rows, failed = [], {}
    for key in args.models:
        try:
            rows.append(bench_model(key, args, log))
        except Exception as e:  # noqa: BLE001 -- keep going, report the model as failed
            failed[key] = f"{type(e).__name__}: {e}"
            log(f"{MODELS[key].label} FAILED, skipped: {failed[key]}")
        gc.collect()
    load1 = os.getloadavg()[0]
    print(f"\n224 px, one-logit head; throughput at batch {args.batch} (median of "
          f"{args.repeats}), latency at batch 1 (median of {args.latency_calls}); load average "
          f"{load0:.1f} -> {load1:.1f} on {os.cpu_count()} CPUs\n")
    print(markdown_table(rows))
    for key, why in failed.items():
        print(f"FAILED {MODELS[key].label}: {why}")
    meta = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "cpu_count": os.cpu_count(), "load_avg_1min_before_after": [load0, load1],
            "jax": jax.__version__, "torch": torch.__version__,
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "batch": args.batch,
            "repeats": args.repeats, "latency_calls": args.latency_calls}
    with open(args.json, "w") as f:
        json.dump({"meta": meta, "rows": rows, "failed": failed}, f, indent=1)
    print(f"\nwrote {args.json}")
    return rows


if __name__ == "__main__":
    main()
