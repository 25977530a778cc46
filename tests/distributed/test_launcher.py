"""``hydra/launcher=local`` and ``hydra/launcher=slurm``: the hydra-submitit-launcher path, run for real.

The local launcher pickles each job, runs it in a separate process through submitit's local
executor and waits for its result; here the SLURM launcher is followed up to the ``sbatch`` call,
with stand-ins for ``sinfo``, ``srun`` and ``sbatch`` on PATH describing a GPU cluster (the real
cluster's runs: tests/distributed/test_slurm.py).
"""

from __future__ import annotations

import json
import math
import os
import shlex

from omegaconf import OmegaConf

from tests.runs import clean_env, multirun, tail

STEPS = 2
TINY = ["experiment=smoke", f"trainer.limit_train_batches={STEPS}", "trainer.limit_val_batches=2"]


def test_local_launcher_runs_each_job_in_its_own_run_dir(tmp_path):
    sweep = tmp_path / "sweep"
    proc = multirun("hydra/launcher=local", *TINY, "loss.cov_coeff=1,2", f"hydra.sweep.dir={sweep}", env=clean_env())
    assert proc.returncode == 0, tail(proc)

    for num, cov_coeff in enumerate((1, 2)):
        run_dir = sweep / str(num)
        assert (run_dir / "metrics.json").exists(), f"no {run_dir}/metrics.json\n{tail(proc)}"
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert math.isfinite(metrics["val/probe_acc1"]), metrics
        assert metrics["step"] == STEPS, metrics
        assert (run_dir / "checkpoints" / "last.ckpt").exists()
        # Each job got its own override and nothing else of the sweep.
        assert f"loss.cov_coeff={cov_coeff}" in OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")
        assert OmegaConf.load(run_dir / ".hydra" / "config.yaml").loss.cov_coeff == cov_coeff

        # submitit's folder for this job (hydra.job.id is submitit's job id) holds its logs.
        job_id = OmegaConf.load(run_dir / ".hydra" / "hydra.yaml").hydra.job.id
        logs = sweep / "submitit" / str(job_id)
        stdout, stderr = logs / f"{job_id}_0_log.out", logs / f"{job_id}_0_log.err"
        assert stdout.exists() and stderr.exists(), sorted(p.name for p in logs.parent.rglob("*"))
        job_stdout = stdout.read_text()
        assert f"Final metrics ({run_dir / 'metrics.json'})" in job_stdout, job_stdout[-3000:]
        assert "Job completed successfully" in job_stdout, job_stdout[-3000:]


def test_slurm_launcher_asks_sbatch_for_one_task_per_gpu(tmp_path):
    """Up to sbatch: the script submitit writes from conf/hydra/launcher/slurm.yaml."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")  # submitit looks for srun before submitting
    # A partition of 4 nodes with 64 CPUs and 8 GPUs each, as sinfo --format=%P|%D|%c|%G reports it.
    (bin_dir / "sinfo").write_text("#!/bin/sh\necho 'cpu*|16|128|(null)'\necho 'gpu|4|64|gpu:a100:8(S:0-1)'\n")
    (bin_dir / "sbatch").write_text(
        f'#!/bin/sh\ncp "$1" {shlex.quote(str(tmp_path / "job.sbatch"))}\necho "sbatch: error: no cluster here" >&2\nexit 1\n'
    )
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    sweep = tmp_path / "sweep"
    proc = multirun(
        "hydra/launcher=slurm", "trainer=ddp", "trainer.devices=8", "trainer.num_nodes=4",
        "hydra.launcher.partition=gpu", "hydra.launcher.account=proj", f"hydra.sweep.dir={sweep}",
        env=clean_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}"), timeout=120,
    )
    assert "no cluster here" in proc.stderr, tail(proc)
    script = (tmp_path / "job.sbatch").read_text()
    # The job name is Hydra's (train): Lightning ignores SLURM for jobs named bash or interactive.
    for flag in ("--nodes=4", "--gpus-per-node=8", "--ntasks-per-node=8", "--cpus-per-task=8",
                 "--partition=gpu", "--account=proj", "--signal=USR2@300", "--time=1440", "--job-name=train"):
        assert f"#SBATCH {flag}\n" in script, script
    assert f"--output {sweep}/submitit/%j/%j_%t_log.out" in script, script
    assert "srun " in script and "-m submitit.core._submit" in script, script
