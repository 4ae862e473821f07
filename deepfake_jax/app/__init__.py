"""A local web app over trained runs: upload images, get p_fake, labels and heatmaps.

    pip install -e '.[app]'
    python -m deepfake_jax.app --workdir runs/demo [--workdir runs/other ...]
        [--segmentation_workdir runs/parsing] [--checkpoint latest|best|STEP]
        [--host 127.0.0.1] [--port 8000] [--max_upload_mb 32] [--max_megapixels 40]

Modules: `loaded_runs` (models restored and compiled once at start-up, evaluation reports on disk),
`analysis` (uploads -> per-image results, scored in batches through predict's code path),
`web` (Flask routes and pages), `__main__` (the command line).
"""
