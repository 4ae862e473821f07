"""Export a trained run as a self-contained serving artifact (`jax.export`).

    python -m deepfake_jax.export --workdir runs/demo --output model.jaxexport
        [--checkpoint latest|best|STEP] [--use_ema|--nouse_ema] [--platforms cpu,cuda]

Writes `model.jaxexport`, a serialized `jax.export.Exported` of

    uint8 RGB (batch, S, S, 3) -> normalise (run's mean/std) -> network (eval mode) -> p_fake

with the checkpoint's weights baked in as constants, S the run's crop size and a symbolic
batch dimension (any batch size, no re-tracing), and `model.jaxexport.json` beside it (crop
size, resize_to, mean/std, the validation threshold, model, checkpoint step). Load it with
`deepfake_jax.inference.serving.load_exported`, which needs only jax and numpy.

The artifact runs on the platforms it was lowered for (default: this machine's backend; pass
`--platforms cpu,cuda` for both). Weights are embedded, so models beyond ~1 GB of float32
parameters approach the 2 GB serialization limit.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from deepfake_jax import cli, console, json_io, runs
from deepfake_jax.data import input_pipeline, normalization
from deepfake_jax.inference import serving
from deepfake_jax.tasks import classification
from deepfake_jax.training import sharding

PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # what jax.export lowers for


def parse_platforms(value: str | list[str] | None) -> list[str] | None:
    """`--platforms`: a comma-separated subset of PLATFORMS (None: this machine's backend).
    Raises ValueError for anything else (an artifact for an unknown platform runs nowhere)."""
    if value is None:
        return None
    names = [p.strip().lower() for p in (value.split(",") if isinstance(value, str) else value)]
    unknown = [p for p in names if p not in PLATFORMS]
    if not names or unknown:
        raise ValueError(f"--platforms {value!r}: unknown platform(s) "
                         f"{', '.join(repr(p) for p in unknown) or '(none given)'}; choose from "
                         f"{', '.join(PLATFORMS)}, comma-separated")
    return list(dict.fromkeys(names))


def serving_function(graphdef, params, batch_stats, mean, std, flip_tta: bool = False):
    """uint8 NHWC -> p_fake as the trainer's eval step computes it, with the weights closed
    over (exported as constants)."""

    def serve(images):
        model = nnx.merge(graphdef, params, batch_stats)
        return classification.p_fake_of_images(model, images, mean, std, flip_tta)

    return serve


def export_run(workdir: str, output: str, *, checkpoint: str = "latest",
               use_ema: bool | None = None, platforms: list[str] | None = None) -> dict:
    """Writes the artifact and its sidecar JSON; returns the metadata."""
    platforms = parse_platforms(platforms)
    workdir = os.path.abspath(workdir)
    config = runs.load_run_config(workdir, checkpoint)
    use_ema = bool(config.eval.use_ema) if use_ema is None else bool(use_ema)
    mesh = sharding.make_mesh(None, devices=jax.local_devices()[:1])
    graphdef, state, step = runs.restore_weights(config, workdir, checkpoint, mesh)
    params, batch_stats = jax.device_get(
        (state.ema_params, state.ema_batch_stats) if use_ema else (state.params,
                                                                     state.batch_stats))
    mean, std = normalization.mean_std(config.input)
    size = input_pipeline.eval_crop_size(config.input)
    flip_tta = bool(config.eval.get("flip_tta", False))

    batch, = jax.export.symbolic_shape("batch")
    spec = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8)
    serve = jax.jit(serving_function(graphdef, params, batch_stats, mean, std, flip_tta))
    exported = jax.export.export(serve, platforms=platforms)(spec)
    blob = exported.serialize()

    threshold, source = runs.find_threshold(workdir, config.data.val_split)
    if source.startswith("default"):
        threshold, source = None, "none: the run has no evaluation metrics.json"
    metadata = {
        "format": serving.FORMAT,
        "input": {"dtype": "uint8", "shape": ["batch", size, size, 3], "layout": "NHWC, RGB"},
        "output": "p_fake: float32 (batch,), probability that each image is fake",
        "crop_size": size,
        "resize_to": config.input.get("resize_to") or None,
        "mean": list(mean),
        "std": list(std),
        "normalisation": "(image / 255 - mean) / std, applied inside the artifact",
        "flip_tta": flip_tta,
        "threshold": threshold,
        "threshold_source": source,
        "model_name": config.model_name,
        "model": dict(config.get("model", {})),
        "num_classes": int(config.num_classes),
        "workdir": workdir,
        "checkpoint_step": int(step),
        "use_ema": use_ema,
        "platforms": list(exported.platforms),
        "jax_version": jax.__version__,
        "calling_convention_version": int(exported.calling_convention_version),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "wb") as f:
        f.write(blob)
    json_io.write_json(metadata, serving.metadata_path(output), indent=1)
    return metadata


def flax_p_fake(workdir: str, images: np.ndarray, *, checkpoint: str = "latest",
                use_ema: bool | None = None) -> np.ndarray:
    """p_fake of uint8 crop-size images by the trainer's own eval step (the reference)."""
    workdir = os.path.abspath(workdir)
    config = runs.load_run_config(workdir, checkpoint)
    use_ema = bool(config.eval.use_ema) if use_ema is None else bool(use_ema)
    mesh = sharding.make_mesh(None, devices=jax.local_devices()[:1])
    graphdef, state, _ = runs.restore_weights(config, workdir, checkpoint, mesh)
    evals = classification.make_eval_steps(config, mesh, graphdef,
                                  jax.tree.map(lambda x: x.sharding, state))
    batch = sharding.host_to_global(mesh, {"image": np.asarray(images, np.uint8),
                                           "label": np.zeros((len(images),), np.int32)})
    return np.asarray(evals[use_ema](state, batch))


def parity_check(workdir: str, output: str, *, checkpoint: str = "latest",
                 use_ema: bool | None = None, batch_size: int = 4, seed: int = 0) -> float:
    """Max |p_fake(artifact) - p_fake(trainer's eval step)| on random uint8 images."""
    detector = serving.load_exported(output)
    size = detector.crop_size
    images = np.random.default_rng(seed).integers(0, 256, (batch_size, size, size, 3),
                                                  dtype=np.uint8)
    reference = flax_p_fake(workdir, images, checkpoint=checkpoint, use_ema=use_ema)
    return float(np.max(np.abs(detector(images) - reference)))


def main(argv: list[str] | None = None) -> dict:
    parser = cli.ArgumentParser("python -m deepfake_jax.export", __doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="a training workdir")
    parser.add_argument("--output", required=True, help="artifact path, e.g. model.jaxexport")
    parser.add_argument("--checkpoint", default="latest", help="latest, best or a step")
    parser.add_bool("use_ema", None, "export the EMA weights (--nouse_ema: the raw ones; "
                    "default: the run's config)")
    parser.add_argument("--platforms", default=None,
                        help="comma-separated: cpu, cuda, rocm, tpu (default: this backend)")
    args = parser.parse_args(argv)
    console.setup(args.verbose)
    try:
        platforms = parse_platforms(args.platforms)
    except ValueError as e:
        parser.error(str(e))
    try:
        meta = export_run(args.workdir, args.output, checkpoint=args.checkpoint,
                          use_ema=args.use_ema, platforms=platforms)
    except (FileNotFoundError, ValueError) as e:  # not a run, no checkpoint, bad --checkpoint
        sys.exit(f"error: {e}")
    size = os.path.getsize(args.output)
    print(f"exported {meta['model_name']} step {meta['checkpoint_step']} "
          f"({'EMA' if meta['use_ema'] else 'raw'} weights) for {', '.join(meta['platforms'])}:"
          f" {args.output} ({size / 1e6:.1f} MB) + {serving.metadata_path(args.output)}")
    print(f"input uint8 (batch, {meta['crop_size']}, {meta['crop_size']}, 3); threshold "
          f"{meta['threshold']} ({meta['threshold_source']})")
    if jax.default_backend() in meta["platforms"]:
        diff = parity_check(args.workdir, args.output, checkpoint=args.checkpoint,
                            use_ema=meta["use_ema"])
        print(f"parity with the trainer's eval step on 4 random images: max |dp_fake| = "
              f"{diff:.2e}")
    return meta


if __name__ == "__main__":
    main()
