"""Entry point: python -m deepfake_jax.main --config configs/default.py --workdir runs/demo

Any config value can be overridden: --config.input.batch_size=128 --config.data.dir=/data/x
"""

import sys

from deepfake_jax.training import huge_pages

if __name__ == "__main__":
    huge_pages.reexec_with_huge_pages()  # before JAX allocates anything (see huge_pages.py)

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from deepfake_jax import console, tasks  # noqa: E402
from deepfake_jax.training import distributed  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and evaluation go.")
config_flags.DEFINE_config_file("config", None, "An ml_collections config file.",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])
# Multi-host runs: set these (or DFJ_* variables) unless SLURM / TPU VM detection does it.
flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 (multi-process runs).")
flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")


# Exit status of a run that stopped before its end with a checkpoint saved (SIGTERM/SIGINT, or
# config.halt_after_steps): rerun the same command to resume. 75 is EX_TEMPFAIL of sysexits.h
# ("try again later"); scripts/slurm_train.sbatch requeues the job on it.
HALTED_EXIT_STATUS = 75


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    console.setup()
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    try:
        if FLAGS.config.get("kfold", 0) > 1:
            from deepfake_jax.experiments import kfold

            summary = kfold.run_kfold(FLAGS.config, FLAGS.workdir)
        else:
            summary = tasks.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except (OSError, ValueError) as e:  # bad data, config, workdir or checkpoint: one line
        if console.verbose_requested():
            raise
        sys.exit(f"error: {e}")
    if summary.get("halted"):
        print(f"halted ({summary['halted']}) at step {summary.get('step', '?')} with a "
              f"checkpoint: rerun the same command to resume (exit status "
              f"{HALTED_EXIT_STATUS})", file=sys.stderr)
        sys.exit(HALTED_EXIT_STATUS)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with the config's own errors (unknown key, bad arg) said in one line."""
    try:
        rest = FLAGS(argv)
        if FLAGS.config is not None:
            FLAGS.config.get("seed")  # a config file that failed to load raises only when used
        return rest
    except (flags.Error, AttributeError, KeyError, ValueError, TypeError, OSError) as e:
        root = e
        while root.__context__ is not None and not str(root).strip():
            root = root.__context__
        sys.exit(
            f"error in the command line or config: {type(root).__name__}: {root}\n"
            "Overrides must name keys that exist in the config file, e.g. "
            "--config.input.batch_size=32; see --helpshort."
        )


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
