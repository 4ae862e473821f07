"""Re-score a finished k-fold run's checkpoints with other eval views (no retraining).

    python bench/eval_views.py --run runs/pt_cv --views 224,256,256+flip [--folds 5]

Each view is an eval center-crop size (`config.input.eval_crop_size`), with `+flip` for the
mirror average (`config.eval.flip_tta`). Per fold: the threshold and the test ROC AUC from
`evaluate.evaluate_checkpoint` (the run's own valid and test splits), with the fold's config
changed only in those two settings. Reports go to a temporary folder, not into the run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def score_view(workdir: str, size: int, flip: bool, out_root: str) -> float:
    from deepfake_jax import evaluate, runs
    from deepfake_jax.evaluation import evaluators

    real_load, real_eval = runs.run_config_at, evaluators.evaluate_splits

    def load_with_view(*args, **kwargs):
        config, step = real_load(*args, **kwargs)
        config.input.eval_crop_size = size
        config.eval.flip_tta = flip
        return config, step

    def eval_elsewhere(*args, out_dir, **kwargs):
        return real_eval(*args, out_dir=os.path.join(out_root, os.path.basename(out_dir)),
                         **kwargs)

    with mock.patch.object(evaluate, "run_config_at", load_with_view), \
            mock.patch.object(evaluators, "evaluate_splits", eval_elsewhere):
        results = evaluate.evaluate_checkpoint(workdir, bootstrap=0)
    return float(next(iter(results.values()))["roc_auc"])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a --config.kfold=K workdir")
    parser.add_argument("--views", default="224,256,256+flip")
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args(argv)
    views = [(int(v.split("+")[0]), v.endswith("+flip")) for v in args.views.split(",")]
    table = {}
    with tempfile.TemporaryDirectory() as out_root:
        for size, flip in views:
            name = f"{size}{'+flip' if flip else ''}"
            table[name] = [score_view(os.path.join(args.run, f"fold_{f}"), size, flip,
                                      os.path.join(out_root, name, str(f)))
                           for f in range(args.folds)]
    print("| test view | " + " | ".join(f"fold {f}" for f in range(args.folds)) + " | mean |")
    print("|---|" + "---:|" * (args.folds + 1))
    for name, aucs in table.items():
        print(f"| {name} | " + " | ".join(f"{a:.3f}" for a in aucs)
              + f" | {sum(aucs) / len(aucs):.3f} |")
    return table


if __name__ == "__main__":
    main()
