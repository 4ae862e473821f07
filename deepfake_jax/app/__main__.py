"""`python -m deepfake_jax.app`: load the runs once, then serve the app (see the package doc)."""

from __future__ import annotations

import argparse
import ipaddress
import sys
import time

from absl import logging

from deepfake_jax import cli, console
from deepfake_jax.data import image_io


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = cli.ArgumentParser(prog="python -m deepfake_jax.app", description=(
        "Local web app: upload face images, get p_fake and real/fake labels from trained runs, "
        "heatmaps, face parsing, and each run's evaluation report."))
    p.add_argument("--workdir", action="append", required=True, metavar="DIR",
                   help="a training workdir (config.json + checkpoints/); repeat for several")
    p.add_argument("--segmentation_workdir", metavar="DIR",
                   help="a face-parsing run (deepfake_jax.segment) for the parsing overlay and "
                        "the heatmap's share per face region")
    p.add_argument("--checkpoint", default="latest", help="latest, best or a step (every run)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: this machine only; the app has no login)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free one)")
    p.add_argument("--batch_size", type=int, default=16, help="images per jitted step")
    p.add_argument("--max_upload_mb", type=float, default=32, help="limit of one upload")
    p.add_argument("--max_megapixels", type=float, default=40, help="limit per image")
    args = p.parse_args(argv)
    for name, value in (("--max_upload_mb", args.max_upload_mb),
                        ("--max_megapixels", args.max_megapixels),
                        ("--batch_size", args.batch_size)):
        if not value > 0 or value == float("inf"):  # also refuses nan
            p.error(f"{name} must be a positive number, got {value:g}")
    limit = image_io.MAX_PIXELS / 1e6
    if args.max_megapixels > limit:
        p.error(f"--max_megapixels {args.max_megapixels:g} is above the {limit:g} megapixels "
                "that image decoding accepts per image")
    if args.port < 0 or args.port > 65535:
        p.error(f"--port must be 0-65535, got {args.port}")
    return args


def load_everything(args) -> tuple[list, object, list[str]]:
    """(runs, face parsing or None, notes on what is not available). Exits on a bad workdir."""
    from deepfake_jax.app import loaded_runs as runs_lib

    notes = []
    runs = []
    for workdir in args.workdir:
        try:
            runs.append(runs_lib.LoadedRun(workdir, checkpoint=args.checkpoint,
                                           batch_size=args.batch_size))
        except (FileNotFoundError, ValueError) as e:  # not a run, no checkpoint, bad step
            sys.exit(f"error: --workdir {workdir}: {e}")
    explain = runs_lib.optional_module("deepfake_jax.inference.explain")
    if explain is None:
        notes.append("Heatmaps: not available (deepfake_jax.inference.explain is not installed).")
    else:
        for run in runs:
            try:
                run.attach_explainer(explain)
            except Exception as e:  # noqa: BLE001 - scoring works without heatmaps
                logging.warning("no heatmaps for %s: %s", run.workdir, e)
                notes.append(f"Heatmaps: not available for {run.name} "
                             f"({type(e).__name__}: {e}).")
    parsing = None
    if not args.segmentation_workdir:
        notes.append("Face parsing: off (start the app with --segmentation_workdir DIR for the "
                     "parsing overlay and the heatmap's share per face region).")
    else:
        from deepfake_jax.parsing import label_maps, parser

        try:
            parsing = runs_lib.FaceParsing(parser, label_maps, args.segmentation_workdir,
                                           checkpoint="latest")
        except (FileNotFoundError, ValueError) as e:
            sys.exit(f"error: --segmentation_workdir {args.segmentation_workdir}: {e}")
    return runs, parsing, notes


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    console.setup(args.verbose)
    try:
        from werkzeug.serving import make_server

        from deepfake_jax.app import web
    except ImportError as e:
        sys.exit(f"error: the app needs its extra: pip install -e '.[app]' ({e})")
    start = time.time()
    runs, parsing, notes = load_everything(args)
    app = web.create_app(runs, parsing=parsing, notes=notes, max_upload_mb=args.max_upload_mb,
                         max_megapixels=args.max_megapixels)
    server = make_server(args.host, args.port, app, threaded=True)
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback:
        logging.warning("listening on %s: anyone who can reach this address can use the app",
                        args.host)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"deepfake_jax app: {len(runs)} model(s) loaded in {time.time() - start:.1f} s; "
          f"serving on http://{host}:{server.server_port}/ (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
