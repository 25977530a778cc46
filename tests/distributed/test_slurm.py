"""SLURM for real: jobs submitted to the single-node cluster that scripts/slurm_cluster.sh starts
(slurmctld, slurmd, munged; partitions ``cpu`` and ``urgent``, whose jobs preempt ``cpu`` jobs).

Each test runs what docs/scaling-out.md gives: the ``hydra/launcher=slurm`` sweep, and the sbatch recipe
``scripts/slurm/train_cpu.sbatch`` as written (overrides after the script's name). A requeued job
waits 120 s before SLURM starts it again (its BeginTime): the tests move that to now.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import pwd
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests import warm
from tests.runs import ROOT, SLURM_CPU_RECIPE, SLURM_CPU_SWEEP, TWO_EPOCHS, clean_env, multirun, tail, weights

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(shutil.which("sbatch") is None, reason="no SLURM here (sudo bash scripts/slurm_cluster.sh)"),
    # One at a time: the node's CPUs are the cluster's, and a job holds them all.
    pytest.mark.xdist_group("slurm"),
]

PAUSE_AT_STEP_2 = ["+callbacks.pause._target_=tests.helpers.PauseAtStep", "+callbacks.pause.step=2"]


@pytest.fixture(scope="module", autouse=True)
def cluster_up() -> None:
    proc = subprocess.run(["sinfo", "--noheader", "--format=%P %a"], capture_output=True, text=True)
    assert proc.returncode == 0 and "up" in proc.stdout, \
        f"sbatch is installed but the cluster does not answer: sudo bash scripts/slurm_cluster.sh\n{proc.stderr}"


@pytest.fixture(autouse=True)
def no_job_left_behind():
    """A test that fails leaves its jobs running; they would hold the node's CPUs and time out every
    test after it. The cluster's partitions are the tests' own (scripts/slurm_cluster.sh)."""
    yield
    user = os.environ.get("USER") or pwd.getpwuid(os.getuid()).pw_name
    for partition in ("cpu", "urgent"):
        subprocess.run(["scancel", f"--partition={partition}", f"--user={user}"], capture_output=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and subprocess.run(
            ["squeue", "--noheader", "--partition=cpu,urgent", f"--user={user}"], capture_output=True, text=True).stdout.strip():
        time.sleep(0.5)


def job_env() -> dict[str, str]:
    """What a user's shell has: the project's Python (and its vicreg-train) on PATH; the tests'
    helper callbacks importable from the job; errors as a user sees them (no HYDRA_FULL_ERROR)."""
    env = clean_env(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(ROOT))
    env.pop("HYDRA_FULL_ERROR")
    return env


def sbatch(*args: str, cwd: Path) -> str:
    proc = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, cwd=cwd, env=job_env())
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def job_state(job: str) -> tuple[str, str]:
    """(state, reason) of a job still in the queue; ("", "") once it has left it."""
    out = subprocess.run(["squeue", "--noheader", "--jobs", job, "--format=%T %r"], capture_output=True,
                         text=True).stdout.split()
    return (out[0], out[1]) if len(out) >= 2 else ("", "")


# Seconds a requeued job stays held before the tests start it: an attempt started within a second
# of the requeue can find its credential still revoked on slurmd (slurmctld then kills it as
# "non-startable batch job ... Job credential revoked", seen once in six suite runs).
REQUEUE_SETTLE_S = 3.0
_held_since: dict[str, float] = {}


def start_requeued_jobs_now() -> None:
    """SLURM holds a requeued job for 120 s (its BeginTime): start every such job once it has been
    held for :data:`REQUEUE_SETTLE_S`."""
    listing = subprocess.run(["squeue", "--noheader", "--states=PENDING", "--format=%i %r"], capture_output=True,
                             text=True).stdout
    held = {job for job, reason in (line.split(maxsplit=1) for line in listing.splitlines())
            if reason.strip() == "BeginTime"}
    for job in set(_held_since) - held:
        del _held_since[job]
    now = time.monotonic()
    for job in held:
        if now - _held_since.setdefault(job, now) >= REQUEUE_SETTLE_S:
            subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], capture_output=True)


def wait_until(done, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        start_requeued_jobs_now()
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def validated_epochs(run_dir: Path) -> list[str]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return [row["epoch"] for row in csv.DictReader(f) if row.get("val/probe_acc1")]


def assert_same_weights(a_dir: Path, b_dir: Path) -> None:
    a, b = weights(a_dir), weights(b_dir)
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"{b_dir} differs from {a_dir} in {different[:5]}"


def test_a_launcher_sweep_on_the_cpu_partition_runs_every_job(tmp_path):
    sweep = tmp_path / "sweep"
    proc = multirun(*SLURM_CPU_SWEEP, "experiment=smoke", "trainer.limit_train_batches=2", f"hydra.sweep.dir={sweep}",
                    env=job_env(), timeout=400)
    assert proc.returncode == 0, tail(proc)
    [script] = (sweep / "submitit").glob("*/*_submission.sh")
    text = script.read_text()
    # CPU: no GPUs asked for, one task per device, no more CPUs than the node has, requeueable.
    assert "--gpus-per-node" not in text and "#SBATCH --ntasks-per-node=1\n" in text, text
    assert f"#SBATCH --cpus-per-task={min(8, os.cpu_count())}\n" in text and "#SBATCH --requeue\n" in text, text
    for num, cov_coeff in enumerate((1, 2)):
        run_dir = sweep / str(num)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["step"] == 2 and OmegaConf.load(run_dir / ".hydra" / "config.yaml").loss.cov_coeff == cov_coeff
        # The driver got each job's result back from SLURM: the metric train() returned.
        job_id = OmegaConf.load(run_dir / ".hydra" / "hydra.yaml").hydra.job.id
        result = sweep / "submitit" / job_id / f"{job_id}_0_result.pkl"
        status, job_return = pickle.loads(result.read_bytes())
        assert status == "success" and job_return.return_value == pytest.approx(metrics["val/probe_acc1"])


def test_the_sbatch_recipe_requeued_by_usr1_then_preempted_resumes_by_itself_like_two_local_processes(
        two_epoch_ddp_run, tmp_path):
    # Two tasks (devices=2, gloo): USR1 at step 2 (what --signal=USR1@300 sends), then, in the
    # requeued attempt, a preemption at step 6 by a job of the higher-priority partition.
    usr1, preempt = tmp_path / "usr1", tmp_path / "preempt"
    job = sbatch(str(SLURM_CPU_RECIPE), *TWO_EPOCHS, *PAUSE_AT_STEP_2, f"+callbacks.pause.marker={usr1}",
                 "+callbacks.pause2._target_=tests.helpers.PauseAtStep", "+callbacks.pause2.step=6",
                 f"+callbacks.pause2.marker={preempt}", cwd=tmp_path)
    log = tmp_path / f"slurm-{job}.out"
    wait_until(lambda: usr1.exists() or not job_state(job)[0], 180, "the job to reach step 2")
    assert usr1.exists(), log.read_text()[-3000:]
    subprocess.run(["scancel", "--signal=USR1", job], check=True)
    wait_until(lambda: preempt.exists() or not job_state(job)[0], 240, "the requeued job to reach step 6")
    assert preempt.exists(), log.read_text()[-3000:]
    urgent = sbatch("--partition=urgent", f"--cpus-per-task={os.cpu_count()}", "--wrap=sleep 1", cwd=tmp_path)
    wait_until(lambda: not job_state(urgent)[0], 120, "the urgent job to run")
    wait_until(lambda: not job_state(job)[0], 300, "the preempted job to finish")

    text = log.read_text()
    run_dir = tmp_path / "outputs" / "train" / "slurm" / job
    assert (run_dir / "metrics.json").exists(), text[-4000:]
    # One run directory for both tasks and all three attempts, each attempt's log kept.
    assert [p.name for p in (tmp_path / "outputs" / "train" / "slurm").iterdir()] == [job]
    first, _, rest = text.partition(f"requeued SLURM job {job}")
    assert "saved" in first and "at step 2" in first, text[-4000:]
    assert "SLURM_RESTART_COUNT=1" in rest and "SLURM_RESTART_COUNT=2" in rest, text[-4000:]
    assert json.loads((run_dir / "metrics.json").read_text())["step"] == 8
    # One checkpoint per stop (no hpc_ckpt_N.ckpt beside it), every epoch validated once.
    assert not list(run_dir.glob("hpc_ckpt_*.ckpt"))
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best-epoch001.ckpt", "last.ckpt"]
    assert validated_epochs(run_dir) == ["0", "1"]
    assert_same_weights(two_epoch_ddp_run, run_dir)


def test_a_launcher_job_past_its_time_limit_is_requeued_and_resumes(two_epoch_run, tmp_path):
    # submitit's USR2 comes signal_delay_s before the 2-minute limit, while the job waits at step 2.
    sweep, marker = tmp_path / "sweep", tmp_path / "paused"
    driver = warm.popen(
        [sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=slurm", "hydra.launcher.partition=cpu",
         "hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=100", *TWO_EPOCHS, *PAUSE_AT_STEP_2,
         f"+callbacks.pause.marker={marker}", f"hydra.sweep.dir={sweep}"],
        capture=True, merge=True, cwd=ROOT, env=job_env())
    try:
        wait_until(lambda: driver.poll() is not None, 400, "the sweep to end")
    finally:
        driver.kill()
    output = driver.communicate()[0]
    assert driver.returncode == 0, output[-4000:]
    run_dir = sweep / "0"
    [job_log] = (sweep / "submitit").glob("*/*_0_log.err")
    text = job_log.read_text()
    assert marker.exists() and "SLURM_RESTART_COUNT=1" in text, text[-4000:]
    assert validated_epochs(run_dir) == ["0", "1"]
    assert_same_weights(two_epoch_run, run_dir)


def test_tasks_that_differ_from_the_devices_are_refused_in_one_line_before_anything_is_written(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        ["srun", "--ntasks-per-node=1", "vicreg-train", "experiment=smoke", "trainer=ddp", "trainer.accelerator=cpu",
         "trainer.devices=2", f"hydra.run.dir={run_dir}"],
        capture_output=True, text=True, cwd=tmp_path, env=job_env(), timeout=180)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: SLURM started 1 task(s) per node, trainer.devices=2: Lightning runs one task per "
                      "device; start the run with srun --ntasks-per-node=2 (sbatch: #SBATCH --ntasks-per-node=2), "
                      "or set trainer.devices=1"], proc.stderr[-3000:]
    # Nothing but Hydra's (empty) log file: no .hydra/, no checkpoint.
    assert "Traceback" not in proc.stderr and [p.name for p in run_dir.iterdir()] == ["train.log"]
