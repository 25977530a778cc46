"""SLURM as a run meets it: the allocation checked against the trainer, a requeued job resumed by
itself, and the job requeued after its one checkpoint.

- :func:`check_allocation`: Lightning runs one SLURM task per device and takes its ranks from
  SLURM; tasks per node that differ from ``trainer.devices`` (``srun -n1`` with ``devices=2`` would
  silently train one process), nodes that differ from ``trainer.num_nodes``, or
  ``trainer.accelerator=gpu`` where no GPU is visible are refused in one line, before the run
  directory is touched.
- :func:`resume_checkpoint`: a job that SLURM started again (``scontrol requeue``, a preemption,
  submitit's requeue at the time limit; ``SLURM_RESTART_COUNT`` > 0) resumes from its run
  directory's checkpoints, with or without ``ckpt_path=last`` on its command line.
- :func:`requeue`: what the requeue signal ends with (``--signal=USR1@300`` of the sbatch
  recipe of docs/scaling-out.md; :class:`~vicreg_lightning.callbacks.preemption.CheckpointOnPreemption` saves first).
  Lightning's own SLURM auto-requeue is switched off (:func:`cluster_environment`): it would write
  an ``hpc_ckpt_N.ckpt`` per signal beside the ``last.ckpt`` of the stop that follows.

- :func:`resolve_allocation`: the driver's side (``hydra/launcher=slurm``, through
  :mod:`hydra_plugins.vicreg_lightning_launchers.slurm`): what sbatch is asked for follows the
  trainer (tasks = devices, GPUs only for a GPU run, CPUs that a node has), checked against the
  partition that ``sinfo`` describes before anything is submitted.

No torch or Lightning is imported here at module level: the launcher runs this in the driver.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from vicreg_lightning.data.catalog import MAX_DEFAULT_WORKERS
from vicreg_lightning.errors import ConfigError
from vicreg_lightning.run_dir import is_first_process

# Lightning treats jobs of these names as interactive shells (salloc, srun --pty bash), not as
# the run's tasks: their SLURM variables describe the shell's allocation.
INTERACTIVE_JOB_NAMES = ("bash", "interactive")


def in_slurm_task() -> bool:
    """Whether this process is a SLURM task whose ranks Lightning takes from SLURM (its rule:
    ``SLURM_NTASKS`` set, the job not an interactive shell)."""
    return "SLURM_NTASKS" in os.environ and os.environ.get("SLURM_JOB_NAME") not in INTERACTIVE_JOB_NAMES


def restart_count() -> int:
    """How many times SLURM has started this job again (0 outside SLURM and on the first start)."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def tasks_per_node() -> int:
    """The tasks SLURM started on this node (``SLURM_TASKS_PER_NODE`` reads ``2`` or ``2(x4)``)."""
    if "SLURM_NTASKS_PER_NODE" in os.environ:
        return int(os.environ["SLURM_NTASKS_PER_NODE"])
    per_node = os.environ.get("SLURM_TASKS_PER_NODE")
    if per_node:
        return int(per_node.split("(")[0].split(",")[0])
    return int(os.environ.get("SLURM_NTASKS", "1")) // int(os.environ.get("SLURM_NNODES", "1"))


def _device_count(devices: Any) -> int | None:
    """``trainer.devices`` as a number of devices per node; None where Lightning decides (auto, -1)."""
    if isinstance(devices, bool) or devices is None:
        return None
    if isinstance(devices, int):
        return devices if devices > 0 else None
    if isinstance(devices, str):
        ids = [part for part in devices.split(",") if part.strip()]
        if "," in devices:
            return len(ids)
        return int(devices) if devices.isdigit() and int(devices) > 0 else None
    return len(devices)  # a list of device ids


def check_allocation(trainer: Any) -> None:
    """Refuse, in one line naming both values and the fix, a run whose devices the allocation
    cannot give it. ``trainer``: the ``trainer`` section of the config."""
    accelerator = str(trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            seen = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
            where = "this job was given no GPU; ask SLURM for them (--gpus-per-node)" if in_slurm_task() \
                else "this machine has none"
            raise ConfigError(f"trainer.accelerator={accelerator}: no CUDA device is visible{seen}: {where}, "
                              "or use trainer.accelerator=cpu")
    if not in_slurm_task():
        return
    devices = _device_count(trainer.get("devices"))
    tasks = tasks_per_node()
    if devices is not None and tasks != devices:
        raise ConfigError(
            f"SLURM started {tasks} task(s) per node, trainer.devices={devices}: Lightning runs one task per "
            f"device; start the run with srun --ntasks-per-node={devices} (sbatch: #SBATCH --ntasks-per-node="
            f"{devices}), or set trainer.devices={tasks}"
        )
    nodes = int(os.environ.get("SLURM_NNODES", os.environ.get("SLURM_JOB_NUM_NODES", "1")))
    num_nodes = int(trainer.get("num_nodes", 1))
    if nodes != num_nodes:
        raise ConfigError(
            f"SLURM allocated {nodes} node(s), trainer.num_nodes={num_nodes}: set trainer.num_nodes={nodes}, "
            f"or ask for --nodes={num_nodes}"
        )


def resume_checkpoint(ckpt_path: str | None, has_checkpoints: bool) -> str | None:
    """The ``ckpt_path`` a job resumes from: a job that SLURM started again resumes from its own
    run directory (``last``) once that holds a checkpoint, whatever its command line says (a
    requeued job runs the command line of its first start)."""
    if restart_count() == 0 or ckpt_path == "last":
        return ckpt_path
    if has_checkpoints or ckpt_path is None:
        if is_first_process():
            print(f"SLURM started this job again (SLURM_RESTART_COUNT={restart_count()}): ckpt_path=last",
                  file=sys.stderr)
        return "last"
    return ckpt_path


def cluster_environment() -> list[Any]:
    """Trainer plugins for a SLURM task: Lightning's SLURM environment without its auto-requeue
    (the requeue signal is :class:`~vicreg_lightning.callbacks.preemption.CheckpointOnPreemption`'s).
    Nothing outside SLURM."""
    if not in_slurm_task():
        return []
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)]


def job_id() -> str | None:
    """The id ``scontrol requeue`` takes: ``<array id>_<index>`` for one job of an array."""
    array_id = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_id is not None and "SLURM_ARRAY_TASK_ID" in os.environ:
        return f"{array_id}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def requeue() -> bool:
    """Put this job back in the queue (``scontrol requeue``); False, with one line saying why,
    where SLURM refused (a job submitted without ``--requeue`` on a cluster with ``JobRequeue=0``)."""
    job = job_id()
    if job is None:
        return False
    proc = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if proc.returncode != 0:
        reason = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no reason given"]
        print(f"scontrol requeue {job} failed ({reason[0]}): submit the job with --requeue; resume it with "
              "ckpt_path=last", file=sys.stderr)
        return False
    print(f"requeued SLURM job {job}; it resumes from its last checkpoint when it starts again", file=sys.stderr)
    return True


@dataclass(frozen=True)
class Partition:
    """What a job of one partition can have, as ``sinfo`` reports it (per node: the largest node's)."""

    name: str
    nodes: int
    cpus: int
    gpus: int
    gres: str


def _leading_int(text: str) -> int:
    match = re.match(r"\d+", text)
    return int(match.group()) if match else 0


def _gpus(gres: str) -> int:
    """GPUs per node in a ``sinfo`` gres field (``gpu:8``, ``gpu:a100:4(S:0-1)``, ``(null)``)."""
    return sum(int(count) for count in re.findall(r"gpu(?::[^:,(]+)?:(\d+)", gres))


def read_partition(name: str | None) -> Partition | None:
    """The partition jobs go to (``name``, or the cluster's default), from ``sinfo``; None where
    sinfo is not there to ask. An unknown partition is a :class:`ConfigError`."""
    try:
        proc = subprocess.run(["sinfo", "--noheader", "--format=%P|%D|%c|%G"], capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    rows = [line.split("|") for line in proc.stdout.splitlines() if line.count("|") == 3]
    names = sorted({row[0].rstrip("*") for row in rows})
    chosen = [row for row in rows if (row[0].rstrip("*") == name if name else row[0].endswith("*"))]
    if not chosen:
        what = f"hydra.launcher.partition={name!r}: no such partition" if name else \
            "hydra.launcher.partition=null: the cluster has no default partition"
        raise ConfigError(f"{what}; sinfo lists {', '.join(names) or 'none'}")
    return Partition(
        name=chosen[0][0].rstrip("*"),
        nodes=sum(_leading_int(row[1]) for row in chosen),
        cpus=max(_leading_int(row[2]) for row in chosen),
        gpus=max(_gpus(row[3]) for row in chosen),
        gres=",".join(sorted({row[3] for row in chosen})),
    )


def resolve_allocation(params: dict[str, Any], trainer: Any, partition: Partition | None) -> dict[str, Any]:
    """The launcher's ``params`` with what follows the trainer filled in: ``gpus_per_node``
    (null: the devices of a GPU run, none on CPU), ``cpus_per_task`` (null: the node's CPUs per
    task, up to :data:`MAX_DEFAULT_WORKERS`). Refuses, naming both values and the fix, what SLURM
    or Lightning would refuse later, or what would wait in the queue for ever."""
    params = dict(params)
    accelerator = str(trainer.get("accelerator", "auto"))
    devices = _device_count(trainer.get("devices")) or 1
    tasks, nodes = int(params["tasks_per_node"]), int(params["nodes"])
    if tasks != devices:
        raise ConfigError(f"hydra.launcher.tasks_per_node={tasks}, trainer.devices={devices}: Lightning runs one "
                          "task per device; leave tasks_per_node unset (it follows trainer.devices)")
    if nodes != int(trainer.get("num_nodes", 1)):
        raise ConfigError(f"hydra.launcher.nodes={nodes}, trainer.num_nodes={trainer.get('num_nodes')}: leave "
                          "nodes unset (it follows trainer.num_nodes)")
    where = f"partition {partition.name!r}" if partition else ""
    if partition is not None and accelerator in ("gpu", "cuda") and partition.gpus == 0:
        raise ConfigError(f"trainer.accelerator={accelerator}, but {where} has no GPUs (sinfo gres: "
                          f"{partition.gres}); choose a GPU partition (hydra.launcher.partition=...) or use "
                          "trainer.accelerator=cpu")
    if partition is not None and nodes > partition.nodes:
        raise ConfigError(f"trainer.num_nodes={nodes}, but {where} has {partition.nodes} node(s): the job would "
                          f"wait in the queue for ever; use trainer.num_nodes<={partition.nodes}")
    if not params.get("gpus_per_node"):
        on_gpus = accelerator in ("gpu", "cuda") or (accelerator == "auto" and partition is not None
                                                     and partition.gpus > 0)
        params["gpus_per_node"] = devices if on_gpus else None
    if partition is not None and params["gpus_per_node"] and params["gpus_per_node"] > partition.gpus:
        raise ConfigError(f"{params['gpus_per_node']} GPUs per node (trainer.devices), but the nodes of {where} "
                          f"have {partition.gpus}: use trainer.devices<={partition.gpus}")
    cpus = params.get("cpus_per_task")
    if cpus is None:
        per_task = partition.cpus // tasks if partition is not None else MAX_DEFAULT_WORKERS
        params["cpus_per_task"] = max(1, min(MAX_DEFAULT_WORKERS, per_task))
    elif partition is not None and cpus * tasks > partition.cpus:
        raise ConfigError(
            f"hydra.launcher.cpus_per_task={cpus} x {tasks} task(s) per node = {cpus * tasks} CPUs, but the nodes "
            f"of {where} have {partition.cpus}: the job would wait in the queue for ever; set "
            f"hydra.launcher.cpus_per_task={max(1, partition.cpus // tasks)} or less (null: as many as fit)"
        )
    return params
