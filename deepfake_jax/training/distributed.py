"""Multi-process (multi-host) start-up: `jax.distributed` initialised from flags or the environment.

One process per host (or per GPU, with SLURM's one task per GPU). Where the settings come
from, first match wins:

1. explicit arguments (`main.py --coordinator_address=HOST:PORT --num_processes=N
   --process_id=I`), or the same in the environment: `DFJ_COORDINATOR_ADDRESS`,
   `DFJ_NUM_PROCESSES`, `DFJ_PROCESS_ID`;
2. a SLURM job step with more than one task (`SLURM_NTASKS`/`SLURM_STEP_NUM_TASKS` > 1):
   jax's own SLURM detection (coordinator = first node of the step);
3. a multi-host Cloud TPU VM slice (`TPU_WORKER_HOSTNAMES` lists more than one worker, or
   `MEGASCALE_*` is set): jax's own TPU detection;
4. otherwise a single process: nothing to do.

On CPU, cross-process collectives need gloo, which jax does not pick by itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import jax
from absl import logging

from deepfake_jax import console

ENV_PREFIX = "DFJ_"


@dataclass(frozen=True)
class ClusterSpec:
    source: str  # "flags", "env", "slurm", "tpu" or "single"
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    @property
    def multi_process(self) -> bool:
        return self.source != "single"


def _int_env(env: dict[str, str], name: str) -> int | None:
    value = env.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def detect(coordinator_address: str | None = None, num_processes: int | None = None,
           process_id: int | None = None, env: dict[str, str] | None = None) -> ClusterSpec:
    """Decides where the multi-process settings come from (see the module docstring)."""
    env = dict(os.environ if env is None else env)
    explicit = (coordinator_address, num_processes, process_id)
    source = "flags"
    if all(v is None for v in explicit):
        explicit = (env.get(ENV_PREFIX + "COORDINATOR_ADDRESS") or None,
                    _int_env(env, ENV_PREFIX + "NUM_PROCESSES"),
                    _int_env(env, ENV_PREFIX + "PROCESS_ID"))
        source = "env"
    if any(v is not None for v in explicit):
        missing = [name for name, v in zip(
            ("coordinator_address", "num_processes", "process_id"), explicit, strict=True)
            if v is None]
        if missing:
            raise ValueError(
                f"multi-process start-up from {source} is missing {', '.join(missing)}: give "
                "all three of coordinator_address (HOST:PORT of process 0), num_processes "
                f"and process_id (or the {ENV_PREFIX}* environment variables)")
        address, count, pid = explicit
        if not 0 <= pid < count:
            raise ValueError(f"process_id={pid} must be in [0, num_processes={count})")
        if count == 1:
            return ClusterSpec("single")
        return ClusterSpec(source, address, count, pid)
    slurm_tasks = _int_env(env, "SLURM_STEP_NUM_TASKS") or _int_env(env, "SLURM_NTASKS")
    if "SLURM_JOB_ID" in env and slurm_tasks and slurm_tasks > 1:
        return ClusterSpec("slurm")
    tpu_workers = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    if len(tpu_workers) > 1 or any(k.startswith("MEGASCALE_") for k in env):
        return ClusterSpec("tpu")
    return ClusterSpec("single")


def _runs_on_cpu() -> bool:
    platforms = os.environ.get("JAX_PLATFORMS", "") or str(jax.config.jax_platforms or "")
    return platforms.split(",")[0].strip() == "cpu"


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> ClusterSpec:
    """Starts `jax.distributed` when the job has several processes; a no-op otherwise.

    Must run before anything touches a jax device (jax.devices(), the first array).
    """
    spec = detect(coordinator_address, num_processes, process_id)
    if not spec.multi_process:
        return spec
    if _runs_on_cpu():  # CPU collectives across processes need gloo
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if spec.source in ("flags", "env"):
        jax.distributed.initialize(coordinator_address=spec.coordinator_address,
                                   num_processes=spec.num_processes, process_id=spec.process_id)
    else:  # jax's cluster detection reads SLURM / TPU metadata itself
        jax.distributed.initialize()
    logging.info("jax.distributed (%s): process %d of %d, %d local / %d global devices",
                 spec.source, jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count())
    console.quiet_other_processes(jax.process_index())
    return spec
