"""The SLURM rules without a cluster: what the launcher asks sbatch for, what a job's allocation
must give the trainer, and when a requeued job resumes (vicreg_lightning/slurm.py). The same rules
on the real cluster: tests/distributed/test_slurm.py."""

from __future__ import annotations

import os

import pytest
from omegaconf import OmegaConf

from tests.runs import ROOT, SLURM_CPU_RECIPE, SLURM_CPU_SWEEP
from vicreg_lightning import slurm
from vicreg_lightning.errors import ConfigError

CPU_NODE = slurm.Partition(name="cpu", nodes=1, cpus=2, gpus=0, gres="(null)")
GPU_NODES = slurm.Partition(name="gpu", nodes=4, cpus=64, gpus=8, gres="gpu:a100:8(S:0-1)")
LAUNCHER = {"nodes": 1, "tasks_per_node": 1, "gpus_per_node": None, "cpus_per_task": None, "partition": None}


def trainer(**values):
    return OmegaConf.create({"accelerator": "auto", "devices": 1, "num_nodes": 1, **values})


def test_the_allocation_follows_the_trainer_on_cpu_and_gpu_partitions():
    on_cpu = slurm.resolve_allocation(LAUNCHER, trainer(accelerator="cpu"), CPU_NODE)
    assert on_cpu["gpus_per_node"] is None and on_cpu["cpus_per_task"] == 2
    auto_on_cpu = slurm.resolve_allocation(LAUNCHER, trainer(), CPU_NODE)
    assert auto_on_cpu["gpus_per_node"] is None
    eight = {**LAUNCHER, "tasks_per_node": 8, "nodes": 4}
    on_gpus = slurm.resolve_allocation(eight, trainer(devices=8, num_nodes=4), GPU_NODES)
    assert on_gpus["gpus_per_node"] == 8 and on_gpus["cpus_per_task"] == 8
    # Without sinfo to ask: a GPU run still asks for its GPUs, a CPU run for none.
    assert slurm.resolve_allocation(LAUNCHER, trainer(accelerator="gpu"), None)["gpus_per_node"] == 1
    assert slurm.resolve_allocation(LAUNCHER, trainer(accelerator="cpu"), None)["gpus_per_node"] is None


@pytest.mark.parametrize("launcher, values, partition, message", [
    ({"cpus_per_task": 8}, {}, CPU_NODE,
     r"hydra.launcher.cpus_per_task=8 x 1 task\(s\) per node = 8 CPUs, but the nodes of partition 'cpu' have 2: "
     r"the job would wait in the queue for ever; set hydra.launcher.cpus_per_task=2 or less"),
    ({}, {"accelerator": "gpu"}, CPU_NODE, r"trainer.accelerator=gpu, but partition 'cpu' has no GPUs"),
    ({"tasks_per_node": 1}, {"devices": 2}, CPU_NODE,
     r"hydra.launcher.tasks_per_node=1, trainer.devices=2: Lightning runs one task per device"),
    ({"nodes": 2, "tasks_per_node": 8}, {"devices": 8, "num_nodes": 2, "accelerator": "gpu"},
     slurm.Partition("gpu", 1, 64, 8, "gpu:8"), r"trainer.num_nodes=2, but partition 'gpu' has 1 node\(s\)"),
])
def test_an_allocation_the_cluster_cannot_give_is_refused_before_submitting(launcher, values, partition, message):
    with pytest.raises(ConfigError, match=message):
        slurm.resolve_allocation({**LAUNCHER, **launcher}, trainer(**values), partition)


def test_sinfo_lines_are_read_per_partition(monkeypatch):
    listing = "cpu*|3|16|(null)\ncpu*|1|32+|(null)\ngpu|2|64|gpu:h100:4(S:0),gpu:a100:4\n"
    monkeypatch.setattr(slurm.subprocess, "run", lambda *a, **k: type("P", (), {"returncode": 0, "stdout": listing}))
    assert slurm.read_partition(None) == slurm.Partition("cpu", 4, 32, 0, "(null)")
    assert slurm.read_partition("gpu").gpus == 8
    with pytest.raises(ConfigError, match=r"hydra.launcher.partition='a100': no such partition; sinfo lists cpu, gpu"):
        slurm.read_partition("a100")


def in_job(monkeypatch, **env: str) -> None:
    for name in [name for name in os.environ if name.startswith("SLURM_")]:
        monkeypatch.delenv(name)
    for name, value in {"SLURM_JOB_ID": "7", "SLURM_JOB_NAME": "vicreg", "SLURM_NNODES": "1", **env}.items():
        monkeypatch.setenv(name, value)


def test_a_job_whose_tasks_differ_from_the_devices_is_refused(monkeypatch):
    in_job(monkeypatch, SLURM_NTASKS="1", SLURM_TASKS_PER_NODE="1")  # srun -n1 ... trainer.devices=2
    with pytest.raises(ConfigError, match=r"SLURM started 1 task\(s\) per node, trainer.devices=2: .*"
                                          r"srun --ntasks-per-node=2 .* or set trainer.devices=1"):
        slurm.check_allocation(trainer(accelerator="cpu", devices=2))
    in_job(monkeypatch, SLURM_NTASKS="4", SLURM_NTASKS_PER_NODE="2", SLURM_TASKS_PER_NODE="2(x2)", SLURM_NNODES="2")
    slurm.check_allocation(trainer(accelerator="cpu", devices=2, num_nodes=2))
    with pytest.raises(ConfigError, match=r"SLURM allocated 2 node\(s\), trainer.num_nodes=1"):
        slurm.check_allocation(trainer(accelerator="cpu", devices=2))
    # An interactive shell's allocation (salloc; srun --pty bash) is not the run's.
    in_job(monkeypatch, SLURM_NTASKS="1", SLURM_TASKS_PER_NODE="1", SLURM_JOB_NAME="bash")
    slurm.check_allocation(trainer(accelerator="cpu", devices=2))


def test_a_gpu_run_where_no_gpu_is_visible_is_refused(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    in_job(monkeypatch, SLURM_NTASKS="1", SLURM_TASKS_PER_NODE="1")
    with pytest.raises(ConfigError, match=r"trainer.accelerator=gpu: no CUDA device is visible: this job was given "
                                          r"no GPU; ask SLURM for them \(--gpus-per-node\), or use "
                                          r"trainer.accelerator=cpu"):
        slurm.check_allocation(trainer(accelerator="gpu"))


def test_a_requeued_job_resumes_from_its_own_checkpoints(monkeypatch):
    in_job(monkeypatch)
    assert slurm.resume_checkpoint(None, has_checkpoints=True) is None  # first start: as given
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert slurm.resume_checkpoint(None, has_checkpoints=True) == "last"
    assert slurm.resume_checkpoint(None, has_checkpoints=False) == "last"  # nothing yet: from scratch
    # A run started from another run's checkpoint continues from its own once it has one.
    assert slurm.resume_checkpoint("/runs/a/last.ckpt", has_checkpoints=False) == "/runs/a/last.ckpt"
    assert slurm.resume_checkpoint("/runs/a/last.ckpt", has_checkpoints=True) == "last"


def test_the_docs_give_the_slurm_commands_that_the_slurm_tests_run():
    page = (ROOT / "docs" / "scaling-out.md").read_text()
    # The sbatch recipe is shown from its file, as the tests submit it.
    assert f"```{{literalinclude}} ../{SLURM_CPU_RECIPE.relative_to(ROOT)}\n:language: bash\n```" in page
    assert f"python train.py -m {' '.join(SLURM_CPU_SWEEP)}\n" in page
    # The GPU recipe is the CPU one with a GPU node's numbers.
    cpu = SLURM_CPU_RECIPE.read_text().splitlines()
    gpu = (SLURM_CPU_RECIPE.parent / "train_gpu.sbatch").read_text().splitlines()
    assert [line for line in gpu if line not in cpu][1:] == [
        "#SBATCH --partition=gpu", "#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
        "#SBATCH --cpus-per-task=8", "srun vicreg-train trainer=ddp trainer.accelerator=gpu \\"]
