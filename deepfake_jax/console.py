"""What the command-line tools print: the project's own lines, not the libraries' chatter.

Every entry point calls `setup()` once before its work. Unless the user asks for everything
(`--verbose`, or absl's `-v N` / `--verbosity=N`), the log handler drops INFO lines from the
libraries (orbax writes dozens per checkpoint; jax, grain, matplotlib, optax ...) and a few
warnings known to be harmless. Warnings and errors from anywhere else still show. In a
multi-process run, processes other than 0 keep only warnings (`quiet_other_processes`): their
INFO lines repeat process 0's.
"""

from __future__ import annotations

import logging as pylogging

from absl import flags, logging

# Source folders of the libraries whose INFO lines are hidden (log records carry the file path;
# orbax and grain log through absl, so the logger name alone does not say who wrote a line).
LIBRARIES = ("/orbax/", "/jax/", "/jaxlib/", "/grain/", "/matplotlib/", "/optax/", "/flax/",
             "/array_record/", "/tensorflow_datasets/", "/etils/", "/PIL/", "/optuna/",
             "/werkzeug/")

# Warnings hidden too: each says nothing the user can or needs to act on.
HARMLESS = (
    # orbax, at every checkpoint saved between validations (they are ranked only when validated)
    "Requested `tracked_metric`; did not provide metrics",
    # jax probing for accelerators that this machine does not have
    "Unable to initialize backend",
    "An NVIDIA GPU may be present on this machine, but a CUDA-enabled jaxlib is not installed",
)

if "verbose" not in flags.FLAGS:
    flags.DEFINE_bool("verbose", False, "Also print the libraries' INFO lines and warnings "
                      "(orbax, jax, grain, matplotlib ...).")


class QuietLibraries(pylogging.Filter):
    """Drops library INFO/DEBUG records and the `HARMLESS` warnings."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        path = record.pathname.replace("\\", "/")
        from_library = any(part in path for part in LIBRARIES)
        if record.levelno < pylogging.WARNING:
            return not from_library
        if record.levelno >= pylogging.ERROR:
            return True
        message = record.getMessage()
        return not any(text in message for text in HARMLESS)


_FILTER = QuietLibraries()


def verbose_requested() -> bool:
    """--verbose, or absl's -v/--verbosity given on the command line (absl CLIs only)."""
    if not flags.FLAGS.is_parsed():
        return False
    return bool(flags.FLAGS.verbose) or flags.FLAGS["verbosity"].present


def setup(verbose: bool | None = None) -> None:
    """Logs INFO lines through absl's handler, filtered unless `verbose` (None: ask the absl
    flags). Safe to call more than once."""
    verbose = verbose_requested() if verbose is None else verbose
    logging.use_absl_handler()  # argparse CLIs too: one format, one handler to filter
    handler = logging.get_absl_handler()
    if verbose:
        handler.removeFilter(_FILTER)
        if not flags.FLAGS.is_parsed() or not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.DEBUG)
        return
    logging.set_verbosity(logging.INFO)
    if _FILTER not in handler.filters:
        handler.addFilter(_FILTER)


def quiet_other_processes(process_index: int) -> None:
    """Only warnings from processes other than 0 (their INFO lines repeat process 0's)."""
    if process_index != 0:
        logging.set_verbosity(logging.WARNING)


