"""Test helper: `python -m deepfake_jax.main ARGS` that sends itself a signal at one point.

    KILL_AT=train:3:SIGKILL python tests/kill_driver.py --config ... --workdir ...

`train:N:SIG`: right after the "train" row of step N reaches metrics.jsonl (mid-training,
after the last checkpoint). `save:N:SIG`: while checkpoint N is being written (after the
train state's files, in the data iterator's item, before the checkpoint is committed).
"""

import os
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _install(spec: str) -> None:
    where, step, name = spec.split(":")
    step, sig = int(step), getattr(signal, name)
    fire = lambda: os.kill(os.getpid(), sig)  # noqa: E731

    if where == "train":
        from deepfake_jax.training import metric_writer

        write = metric_writer.MetricWriter.write

        def write_then_signal(self, at, kind, values):
            write(self, at, kind, values)
            if kind == "train" and at == step:
                fire()

        metric_writer.MetricWriter.write = write_then_signal
    elif where == "save":
        import grain

        from deepfake_jax.training import checkpointing

        saving = {"step": None}
        save = checkpointing.Checkpointer.save

        def save_noting_step(self, at, *args, **kwargs):
            saving["step"] = at
            return save(self, at, *args, **kwargs)

        handler = grain.checkpoint.CheckpointHandler
        save_data = handler.save

        def save_data_then_signal(self, *args, **kwargs):
            if saving["step"] == step:
                fire()  # SIGKILL ends the process here, with the checkpoint half written
            return save_data(self, *args, **kwargs)

        checkpointing.Checkpointer.save = save_noting_step
        handler.save = save_data_then_signal
    else:
        raise ValueError(f"KILL_AT={spec!r}")


if __name__ == "__main__":
    from absl import app

    from deepfake_jax import main

    _install(os.environ["KILL_AT"])
    app.run(main.main, argv=[sys.argv[0], *sys.argv[1:]], flags_parser=main.parse_flags)
