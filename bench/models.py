"""Per-model CPU throughput at 224 px: our JAX models vs the PyTorch reference, in one run.

    python bench/models.py [--models resnet50,vit_b16,vgg16,densenet121,xception,cnn_seed]
        [--batch 8] [--repeats 5] [--steps 2] [--dtype float32|bfloat16]
        [--xla_flags "--xla_cpu_..."] [--json PATH] [--quick]

For each model, at batch `--batch`:

* JAX forward: the trainer's jitted eval step (`classification.make_eval_steps`: uint8 ->
  normalise ->
  network in eval mode -> p_fake), the path `evaluate` and `predict` use.
* JAX train step: the trainer's real jitted step (`classification.make_steps`) with the default
  config's optimizer: AdamW (weight decay on matrices/kernels only), global-norm clipping 1.0,
  plus the EMA of the weights and BatchNorm statistics. Softmax cross-entropy, 1000 classes.
* PyTorch forward: `torch.no_grad()`, eval mode; train step: AdamW + `clip_grad_norm_(1.0)` +
  an EMA of the parameters (`torch._foreach_lerp_`), cross-entropy. Convolutional nets are
  measured in both memory formats (contiguous NCHW and channels_last; VGG-16: channels_last
  only, to stay within memory); the table shows the faster one, the JSON both.
* GFLOP/s: XLA's cost analysis of the jitted computation (flops) / median time, printed
  beside the fp32 GFLOP/s of a jitted 2048 x 2048 matmul (the machine's reachable peak).

References: `transformers` ResNetForImageClassification (ResNet-50) and
ViTForImageClassification (ViT-B/16, SDPA attention); VGG-16 and the seed small CNN are written
below in plain PyTorch (torchvision's wheel for torch 2.13 CPU cannot load its ops here);
EfficientNet-Lite0's is `efficientnet_lite_pytorch` (the `[pretrained]` extra);
DenseNet-121 and Xception have no reference. `--dtype bfloat16` computes in bfloat16 with
float32 parameters on both sides (flax `dtype=bfloat16`; torch `autocast(bfloat16)`).

Timing: every measurement is warmed up (compilation excluded), then the JAX and PyTorch
measurements of a model are interleaved repeat by repeat, so both see the same machine load;
each repeat runs one untimed call (the first after the other framework is slower) and times
`--steps` consecutive calls; medians are reported. Both frameworks use all
CPU cores (`torch.set_num_threads(os.cpu_count())`; XLA's default). The load average before
and after goes into the output: on a shared machine compare ratios, not absolute numbers.
`--xla_flags` is appended to XLA_FLAGS before JAX starts (for the CPU-flag experiments); the
project's own flags (`deepfake_jax/xla_options.py`) are added on import unless XLA_FLAGS names
them: `--xla_flags=--xla_cpu_experimental_ynn_fusion_type=+individual_convolution` measures
jaxlib's defaults.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

IMAGE_SIZE = 224
NUM_CLASSES = 1000


@dataclass(frozen=True)
class ModelSpec:
    label: str  # shown in the table
    family: str  # registry name
    kwargs: dict = field(default_factory=dict)
    torch_reference: str | None = None  # key of TORCH_BUILDERS, None: no reference
    convolutional: bool = True  # measure torch channels_last too


MODELS: dict[str, ModelSpec] = {
    "resnet50": ModelSpec("ResNet-50", "resnet", {"variant": "50"}, "resnet50"),
    "vit_b16": ModelSpec("ViT-B/16", "vit", {"variant": "B/16"}, "vit_b16", convolutional=False),
    "vgg16": ModelSpec("VGG-16", "vgg", {"variant": "16"}, "vgg16"),
    "densenet121": ModelSpec("DenseNet-121", "densenet", {"variant": "121"}),
    "xception": ModelSpec("Xception", "xception", {"variant": "standard"}),
    "cnn_seed": ModelSpec("seed small CNN", "cnn", {"variant": "seed", "image_size": IMAGE_SIZE},
                          "cnn_seed"),
    "efficientnet_lite0": ModelSpec("EfficientNet-Lite0", "efficientnet", {"variant": "lite0"},
                                    "efficientnet_lite0"),
}
QUICK_MODELS = ("cnn_seed", "resnet50")
# Measured in channels_last only: both formats at once got the bench OOM-killed on 24 GB.
LARGE_TORCH_MODELS = ("vgg16",)


# ----------------------------------------------------------------------------- PyTorch side


def _torch_vgg16(torch):
    """torchvision's vgg16 architecture (configuration D), written out."""
    nn = torch.nn
    layers, cin = [], 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
            cin = v
    return nn.Sequential(
        *layers, nn.AdaptiveAvgPool2d((7, 7)), nn.Flatten(),
        nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(4096, NUM_CLASSES))


def _torch_cnn_seed(torch):
    """The seed projects' Keras small CNN (valid 3x3 convs 32/64/128 + 2x2 pools, dense 128)."""
    nn = torch.nn
    layers, cin, size = [], 3, IMAGE_SIZE
    for cout in (32, 64, 128):
        layers += [nn.Conv2d(cin, cout, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        cin, size = cout, (size - 2) // 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(cin * size * size, 128),
                         nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(128, NUM_CLASSES))


def _torch_resnet50(torch):
    from transformers import ResNetConfig, ResNetForImageClassification

    return ResNetForImageClassification(ResNetConfig(num_labels=NUM_CLASSES))


def _torch_vit_b16(torch):
    from transformers import ViTConfig, ViTForImageClassification

    return ViTForImageClassification(ViTConfig(num_labels=NUM_CLASSES,
                                               attn_implementation="sdpa"))


def _torch_efficientnet_lite0(torch):
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-lite0", num_classes=NUM_CLASSES)


TORCH_BUILDERS: dict[str, Callable] = {
    "resnet50": _torch_resnet50, "vit_b16": _torch_vit_b16, "vgg16": _torch_vgg16,
    "cnn_seed": _torch_cnn_seed, "efficientnet_lite0": _torch_efficientnet_lite0,
}


def _logits(out):
    return out.logits if hasattr(out, "logits") else out


def torch_tasks(key: str, batch: int, dtype: str, channels_last: bool):
    """(forward, train_step) closures for the PyTorch reference; each runs one batch."""
    import torch

    torch.manual_seed(0)
    model = TORCH_BUILDERS[key](torch)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE).contiguous(memory_format=fmt)
    y = torch.randint(0, NUM_CLASSES, (batch,))
    params = [p for p in model.parameters() if p.requires_grad]
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if dtype == "bfloat16" \
        else (lambda: torch.autocast("cpu", enabled=False))

    def forward():
        model.eval()
        with torch.no_grad(), autocast():
            return torch.softmax(_logits(model(x)).float(), -1)

    def train_step():
        model.train()
        with autocast():
            loss = torch.nn.functional.cross_entropy(_logits(model(x)).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, params, 0.01)
        return loss.item()

    return forward, train_step


# ----------------------------------------------------------------------------- JAX side


def _flops(jitted, *args) -> float | None:
    """XLA's flop count of `jitted(*args)` (HLO cost analysis before backend fusion)."""
    try:
        cost = jitted.lower(*args).cost_analysis()
    except Exception:  # noqa: BLE001 -- cost analysis is best effort
        return None
    if isinstance(cost, list):
        cost = cost[0] if cost else {}
    return float(cost["flops"]) if cost and cost.get("flops") else None


def jax_tasks(spec: ModelSpec, batch: int, dtype: str):
    """(forward, train_step, fwd_flops, train_flops) with the trainer's jitted steps."""
    import jax
    import jax.numpy as jnp

    from configs import default
    from deepfake_jax.tasks import classification
    from deepfake_jax.training import optim, sharding, train_state

    config = default.get_config()
    config.model_name = spec.family
    config.num_classes = NUM_CLASSES
    config.input.batch_size = batch
    model_kwargs = dict(spec.kwargs)
    if dtype == "bfloat16":
        model_kwargs["dtype"] = jnp.bfloat16  # compute dtype; parameters stay float32
    config.model = model_kwargs
    mesh = sharding.make_mesh(None, devices=jax.devices()[:1])
    tx, schedule = optim.build_optimizer(config.optimizer, 1000)
    graphdef, state, shardings = train_state.create_train_state(config, mesh, tx)
    train_fn, eval_fns = classification.make_steps(config, mesh, graphdef, tx, schedule, shardings)
    eval_fn = eval_fns[False]
    rng = np.random.default_rng(0)
    host = {"image": rng.integers(0, 256, (batch, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8),
            "label": rng.integers(0, NUM_CLASSES, (batch,)).astype(np.int32)}
    data = sharding.host_to_global(mesh, host)
    fwd_flops = _flops(eval_fn, state, data)
    train_flops = _flops(train_fn, state, data)
    holder = {"state": state}

    def forward():
        return jax.block_until_ready(eval_fn(holder["state"], data))

    def train_step():
        holder["state"], metrics = train_fn(holder["state"], data)
        return jax.block_until_ready(metrics)

    return forward, train_step, fwd_flops, train_flops


# ----------------------------------------------------------------------------- timing


def _time_call(fn: Callable, steps: int) -> float:
    # The first call after the other framework ran is slower and not steady (EfficientNet-Lite0's
    # JAX train step at batch 8: 1663, 1023, 526 ms in three rounds, then ~510 ms per call), so
    # each task's turn starts with one untimed call.
    fn()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def interleaved_medians(tasks: dict[str, Callable], repeats: int, steps: int,
                        log: Callable[[str], None]) -> dict[str, list[float]]:
    """Seconds per call of every task: one warm-up call each, then `repeats` rounds in which
    every task runs 1 untimed + `steps` timed calls in turn (same load for all). Returns the
    per-round times."""
    for name, fn in tasks.items():
        t0 = time.perf_counter()
        fn()
        log(f"  warm-up {name}: {time.perf_counter() - t0:.1f} s")
    times: dict[str, list[float]] = {name: [] for name in tasks}
    for r in range(repeats):
        t_round = time.perf_counter()
        for name, fn in tasks.items():
            times[name].append(_time_call(fn, steps))
        left = (time.perf_counter() - t_round) * (repeats - r - 1)
        log(f"  round {r + 1}/{repeats} ({time.perf_counter() - t_round:.1f} s, ETA {left:.0f} s): "
            + ", ".join(f"{n} {t[-1] * 1e3:.0f} ms" for n, t in times.items()))
    return times


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """The fp32 GFLOP/s of one jitted n x n matmul (median of `repeats`): how close to the
    machine's arithmetic peak each model's step gets."""
    import jax
    import jax.numpy as jnp

    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, a).block_until_ready()
    seconds = statistics.median(_time_call(lambda: dot(a, a).block_until_ready(), 3)
                                for _ in range(repeats))
    return 2 * n**3 / seconds / 1e9


def bench_model(key: str, args, log) -> dict:
    spec = MODELS[key]
    log(f"{spec.label}: building and compiling (batch {args.batch}, {args.dtype})")
    t0 = time.perf_counter()
    jfwd, jtrain, fwd_flops, train_flops = jax_tasks(spec, args.batch, args.dtype)
    tasks = {"jax_fwd": jfwd, "jax_train": jtrain}
    formats = []
    if spec.torch_reference and not args.no_torch:
        formats = ["channels_last", "contiguous"] if spec.convolutional and not args.quick \
            else ["contiguous"]
        if spec.torch_reference in LARGE_TORCH_MODELS and len(formats) > 1:
            formats = ["channels_last"]  # two copies + AdamW + EMA of 138M params: > 9 GB RSS
        for fmt in formats:
            tfwd, ttrain = torch_tasks(spec.torch_reference, args.batch, args.dtype,
                                       fmt == "channels_last")
            tasks[f"torch_fwd_{fmt}"] = tfwd
            tasks[f"torch_train_{fmt}"] = ttrain
    log(f"  built in {time.perf_counter() - t0:.1f} s")
    times = interleaved_medians(tasks, args.repeats, args.steps, log)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    ips = {name: args.batch / s for name, s in med.items()}
    row = {
        "model": spec.label, "key": key, "batch": args.batch, "dtype": args.dtype,
        "jax_fwd_img_s": ips["jax_fwd"], "jax_train_img_s": ips["jax_train"],
        "jax_fwd_gflop_per_img": fwd_flops / args.batch / 1e9 if fwd_flops else None,
        "jax_fwd_gflop_s": fwd_flops / med["jax_fwd"] / 1e9 if fwd_flops else None,
        "jax_train_gflop_s": train_flops / med["jax_train"] / 1e9 if train_flops else None,
        "seconds_per_call": {n: ts for n, ts in times.items()},
        "torch": {f: {"fwd_img_s": ips[f"torch_fwd_{f}"],
                      "train_img_s": ips[f"torch_train_{f}"]} for f in formats},
    }
    for mode in ("fwd", "train"):
        if formats:
            best = max(formats, key=lambda f, m=mode: row["torch"][f][f"{m}_img_s"])
            row[f"torch_{mode}_img_s"] = row["torch"][best][f"{mode}_img_s"]
            row[f"torch_{mode}_format"] = best
            row[f"{mode}_ratio"] = row[f"jax_{mode}_img_s"] / row[f"torch_{mode}_img_s"]
        else:
            row[f"torch_{mode}_img_s"] = row[f"torch_{mode}_format"] = row[f"{mode}_ratio"] = None
    return row


def _fmt(v, spec=".1f", suffix=""):
    return "–" if v is None else f"{v:{spec}}{suffix}"


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| model | JAX fwd img/s | torch fwd img/s | fwd ratio | JAX train img/s "
        "| torch train img/s | train ratio | JAX fwd GFLOP/s | JAX train GFLOP/s "
        "| GFLOP/img |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    short = {"channels_last": " (CL)", "contiguous": ""}
    for r in rows:
        tf = "no reference" if r["torch_fwd_img_s"] is None else \
            _fmt(r["torch_fwd_img_s"]) + short[r["torch_fwd_format"]]
        tt = "no reference" if r["torch_train_img_s"] is None else \
            _fmt(r["torch_train_img_s"]) + short[r["torch_train_format"]]
        lines.append(
            f"| {r['model']} | {_fmt(r['jax_fwd_img_s'])} | {tf} | "
            f"{_fmt(r['fwd_ratio'], '.2f', 'x')} | {_fmt(r['jax_train_img_s'], '.2f')} | {tt} | "
            f"{_fmt(r['train_ratio'], '.2f', 'x')} | {_fmt(r['jax_fwd_gflop_s'], '.0f')} | "
            f"{_fmt(r['jax_train_gflop_s'], '.0f')} | {_fmt(r['jax_fwd_gflop_per_img'], '.2f')} |")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated subset of {', '.join(MODELS)}")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="calls timed per repeat")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--xla_flags", default="", help="appended to XLA_FLAGS")
    parser.add_argument("--no_torch", action="store_true", help="JAX only")
    parser.add_argument("--json", default=os.path.join(tempfile.gettempdir(),
                                                       "deepfake_jax_bench_models.json"))
    parser.add_argument("--quick", action="store_true",
                        help="batch 2, 1 repeat, 1 step, small CNN + ResNet-50 (a smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.repeats, args.steps = 2, 1, 1
        if args.models == parser.get_default("models"):
            args.models = ",".join(QUICK_MODELS)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        parser.error(f"--models: unknown {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    if args.batch < 1 or args.repeats < 1 or args.steps < 1:
        parser.error("--batch, --repeats and --steps must be >= 1")
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.xla_flags:  # must happen before JAX creates its CPU client
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
    import jax

    try:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        torch_version = torch.__version__
    except ImportError:
        torch_version, args.no_torch = None, True

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    load_before = os.getloadavg()
    log(f"load average {load_before[0]:.1f}, {os.cpu_count()} CPUs, XLA_FLAGS="
        f"{os.environ.get('XLA_FLAGS', '')!r}")
    rows, failed = [], {}
    for key in args.models:
        try:
            rows.append(bench_model(key, args, log))
        except Exception as e:  # noqa: BLE001 -- keep going, report the model as failed
            failed[key] = f"{type(e).__name__}: {e}"
            log(f"{MODELS[key].label} FAILED, skipped: {failed[key]}")
        gc.collect()
    peak = matmul_peak_gflops()
    log(f"fp32 matmul peak (2048 x 2048, jitted): {peak:.0f} GFLOP/s")
    load_after = os.getloadavg()
    meta = {
        "jax_fp32_matmul_gflop_s": peak,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "load_avg_1min_before_after": [load_before[0], load_after[0]],
        "jax": jax.__version__, "torch": torch_version,
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "image_size": IMAGE_SIZE,
        "batch": args.batch, "repeats": args.repeats, "steps": args.steps, "dtype": args.dtype,
        "command": " ".join([os.path.basename(sys.argv[0])] + (sys.argv[1:] if argv is None
                                                                 else list(argv))),
    }
    table = markdown_table(rows)
    print(f"\n{IMAGE_SIZE} px, batch {args.batch}, {args.dtype}, medians of {args.repeats} x "
          f"{args.steps} calls; load average {load_before[0]:.1f} -> {load_after[0]:.1f} on "
          f"{os.cpu_count()} CPUs; ratio = JAX / PyTorch (CL: torch channels_last was faster)\n")
    print(table)
    print(f"\nJAX fp32 matmul peak on this machine: {peak:.0f} GFLOP/s (compare the GFLOP/s "
          "columns)")
    for key, why in failed.items():
        print(f"FAILED {MODELS[key].label}: {why}")
    with open(args.json, "w") as f:
        json.dump({"meta": meta, "rows": rows, "failed": failed}, f, indent=1)
    print(f"\nwrote {args.json}")
    return rows


if __name__ == "__main__":
    main()
