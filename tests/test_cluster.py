"""The Slurm profiles against a real one-node Slurm, started (and stopped) by this module.

One run of a tiny config through ``--workflow-profile workflow/profiles/slurm-cpu`` is
interrupted the hard way while a model trains: the Snakemake process is SIGKILLed and its Slurm
jobs are cancelled (SIGTERM, then SIGKILL), as when a login node dies. The re-run (``--unlock``,
then the same command) must redo only what was missing or cut off, the training must resume from
its checkpoint, every non-local job of both runs must have been a Slurm job, and the metrics table
must equal, byte for byte, that of an uninterrupted local run (``--cores 2``).

Needs root and Debian's apt when Slurm is not installed (tests/cluster/local_slurm.py); skipped
with the reason otherwise, unless SAMSBENCH_REQUIRE_SLURM=1 (``make test-cluster``), which turns
the skip into a failure. docs/cluster.md describes the set-up.
"""

import copy
import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from test_workflow import TINY_CONFIG

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
_spec = importlib.util.spec_from_file_location("local_slurm", ROOT / "tests/cluster/local_slurm.py")
local_slurm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(local_slurm)

MAX_STEPS = 400
TARGET = "results/tiny/metrics.tsv"
KILLED_RUN = "results/tiny/runs/sams_vae/random/seed0"
# Thread counts decide the bits of CPU results: the cluster jobs use the rules' own (1 each),
# as the local run does; the profile's larger set-threads would not fit this 2-CPU node anyway.
THREADS = ["--set-threads", "train=1", "evaluate=1"]
# Test-only executor settings: no accounting here (squeue, not sacct, for the status), short
# status intervals, and the Slurm logs of successful jobs kept as evidence.
SLURM_TEST_FLAGS = ["--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks",
                    "5", "--slurm-keep-successful-logs"]


def cluster_config():
    """test_workflow's tiny config cut to one split and two models, with a longer training."""
    config = copy.deepcopy(TINY_CONFIG)
    keep = ["sams_vae", "additive_mean"]
    config["models"] = {name: config["models"][name] for name in keep}
    config["splits"] = {"random": config["splits"]["random"]}
    experiment = config["experiments"]["tiny"]
    experiment.update(models=keep, splits=["random"])
    experiment["training"].update(max_steps=MAX_STEPS, val_every=50, checkpoint_every=10)
    return config


def workdir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(cluster_config()))
    return path


def snakemake_cmd(directory, *args):
    return [SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(directory),
            *args]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    state = tmp_path_factory.mktemp("slurm")
    try:
        local_slurm.up(state, log=lambda message: print(message, flush=True))
    except local_slurm.Unavailable as err:
        reason = f"cannot start a local Slurm: {err}"
        if os.environ.get("SAMSBENCH_REQUIRE_SLURM") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    env = local_slurm.client_env(state)
    # The node's only partition is not the default one: jobs reach it through the profile,
    # which reads the partition from the environment.
    env["SBATCH_PARTITION"] = local_slurm.PARTITION
    # Snakemake's full job blocks (rule, jobid, wildcards) instead of the rules' messages:
    # parse_run reads them
    env["SAMSBENCH_RULE_DETAILS"] = "1"
    env.pop("SBATCH_ACCOUNT", None)
    yield {"state": state, "env": env}
    stopped = local_slurm.down(state)
    print(f"stopped {', '.join(stopped)}")


def parse_run(text: str):
    """Jobs of one Snakemake run from its output: {jobid: (local?, rule, wildcards)},
    {jobid: slurm id} of the submissions and the jobids that finished."""
    jobs, current = {}, None
    for line in text.splitlines():
        header = re.match(r"^(local)?rule (\w+):$", line)
        if header:
            current = {"local": bool(header.group(1)), "rule": header.group(2), "wildcards": ""}
            continue
        if current is not None and line.startswith("    "):
            key, _, value = line.strip().partition(": ")
            if key in ("jobid", "wildcards"):
                current[key] = value
            if "jobid" in current:
                jobs[int(current["jobid"])] = (current["local"], current["rule"],
                                               current["wildcards"])
        else:
            current = None
    submitted = {int(a): int(b) for a, b in
                 re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", text)}
    finished = {int(j) for j in re.findall(r"Finished jobid: (\d+)", text)}
    return jobs, submitted, finished


def wait_for(predicate, timeout, proc=None, what=""):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"snakemake exited ({proc.returncode}) before {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def squeue(env, *args):
    result = subprocess.run(["squeue", "-h", *args], capture_output=True, text=True, env=env,
                            timeout=30)
    return result.stdout.split()


@pytest.fixture(scope="module")
def runs(slurm, tmp_path_factory):
    env = slurm["env"]
    base = tmp_path_factory.mktemp("cluster")
    local_dir, cluster_dir = workdir(base / "local"), workdir(base / "cluster")
    started = time.time()
    # The reference: an uninterrupted local run, alongside the cluster runs.
    local_log = open(base / "local_run.log", "w")
    local = subprocess.Popen(snakemake_cmd(local_dir, "--cores", "2", TARGET), stdout=local_log,
                             stderr=subprocess.STDOUT)
    profile = ["--workflow-profile", str(ROOT / "workflow/profiles/slurm-cpu"), *THREADS,
               *SLURM_TEST_FLAGS, TARGET]
    log1 = base / "cluster_run1.log"
    with open(log1, "w") as out:
        head = subprocess.Popen(snakemake_cmd(cluster_dir, *profile), stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
        resume = cluster_dir / KILLED_RUN / "resume.pt"
        try:
            wait_for(resume.exists, 240, head, "a training checkpoint")
        except AssertionError as err:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
            raise AssertionError(f"{err}; its output:\n{log1.read_text()[-4000:]}") from None
        # The login node dies: Snakemake goes at once, its jobs get SIGTERM then SIGKILL.
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
    subprocess.run(["scancel", "--partition", local_slurm.PARTITION], env=env, check=True)
    wait_for(lambda: not squeue(env), 60, what="the cancelled jobs to end")
    killed_at = torch.load(resume, weights_only=True)["step"]
    killed_summary = (cluster_dir / KILLED_RUN / "summary.json").exists()
    crash_seconds = time.time() - started

    # The re-run after the crash: unlock, then the very same command.
    subprocess.run(snakemake_cmd(cluster_dir, "--unlock"), env=env, check=True,
                   capture_output=True)
    rerun = subprocess.run(snakemake_cmd(cluster_dir, *profile), env=env, capture_output=True,
                           text=True, timeout=400)
    assert rerun.returncode == 0, \
        f"the re-run failed:\n{rerun.stdout[-5000:]}\n{rerun.stderr[-5000:]}"
    local.wait(timeout=400)
    local_log.close()
    local_out = (base / "local_run.log").read_text()
    assert local.returncode == 0, f"the local run failed:\n{local_out[-5000:]}"
    print(f"cluster: crash after {crash_seconds:.0f} s, total {time.time() - started:.0f} s")
    return {
        "local": local_dir, "cluster": cluster_dir, "env": env, "state": slurm["state"],
        "run1": log1.read_text(), "run2": rerun.stdout + rerun.stderr,
        "killed_at": killed_at, "killed_summary": killed_summary,
    }


def slurm_job(env, job_id):
    result = subprocess.run(["scontrol", "-o", "show", "job", str(job_id)], capture_output=True,
                            text=True, env=env, timeout=30)
    return dict(re.findall(r"(\w+)=(\S*)", result.stdout))


def test_metrics_equal_an_uninterrupted_local_run(runs):
    local = (runs["local"] / TARGET).read_bytes()
    assert local.count(b"\n") > 10
    assert (runs["cluster"] / TARGET).read_bytes() == local


def test_every_non_local_job_ran_as_a_slurm_job(runs):
    env, cluster = runs["env"], runs["cluster"]
    jobs, submitted, _ = parse_run(runs["run1"])
    # run 1 was killed, perhaps between announcing a job and submitting it
    assert set(submitted) <= {j for j, (local, *_) in jobs.items() if not local}
    jobs, submitted, finished = parse_run(runs["run2"])
    remote = {j for j, (local, *_) in jobs.items() if not local}
    assert remote and set(submitted) == remote, (jobs, submitted)
    assert {rule for local, rule, _ in jobs.values() if local} >= {"aggregate_metrics"}
    assert set(jobs) <= finished
    ctld_log = (runs["state"] / "log" / "slurmctld.log").read_text()
    for job, slurm_id in submitted.items():
        _, rule, _ = jobs[job]
        info = slurm_job(env, slurm_id)
        assert info.get("JobState") == "COMPLETED", (rule, info)
        assert info.get("Partition") == local_slurm.PARTITION
        assert f"_slurm_rpc_submit_batch_job: JobId={slurm_id} " in ctld_log
        logs = list((cluster / ".snakemake/slurm_logs" / f"rule_{rule}").glob(f"*/{slurm_id}.log"))
        assert len(logs) == 1, (rule, slurm_id)
        assert f"rule {rule}:" in logs[0].read_text()


def test_rerun_after_a_crash_resumes_training_and_redoes_only_what_is_missing(runs):
    killed_at = runs["killed_at"]
    assert not runs["killed_summary"], "the training finished before the crash"
    assert 0 < killed_at < MAX_STEPS
    log = (runs["cluster"] / "results/logs/train/tiny/sams_vae/random/seed0.log").read_text()
    assert re.search(rf"resuming \S+ from step {killed_at}\b", log), log[-2000:]

    jobs1, _, finished1 = parse_run(runs["run1"])
    done_before = {jobs1[j][1:] for j in finished1}
    jobs2, _, _ = parse_run(runs["run2"])
    redone = {job[1:] for job in jobs2.values()}
    assert {"prepare_dataset", "make_split"} <= {rule for rule, _ in done_before}
    assert not done_before & redone, done_before & redone
    assert ("train", "experiment=tiny, model=sams_vae, split=random, seed=0") in redone


def test_gpu_profile_requests_a_gpu_where_the_environment_says(slurm, tmp_path):
    """A dry-run of the GPU profile: resources per rule, partition and GPU type from the
    environment (this node has no GPU, so nothing is submitted)."""
    env = {**slurm["env"], "SAMSBENCH_GPU_PARTITION": "gpu_part", "SAMSBENCH_GPU_MODEL": "a100",
           "SBATCH_ACCOUNT": "lab42"}
    work = workdir(tmp_path / "gpu")
    result = subprocess.run(snakemake_cmd(work, "--workflow-profile",
                                          str(ROOT / "workflow/profiles/slurm"), "-n", TARGET),
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    resources = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:\n)", result.stdout):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        found = re.search(r"^    resources: (.*)$", block, re.M)
        if rule and found:
            resources[rule.group(1)] = dict(kv.split("=", 1) for kv in found.group(1).split(", "))
    for rule in ("train", "evaluate"):
        # a string, so that packed runs (job groups) still ask for one GPU per job
        assert resources[rule]["gres"] == "gpu:a100:1"
        assert resources[rule]["slurm_partition"] == "gpu_part"
        assert resources[rule]["slurm_account"] == "lab42"
    assert "gpu" not in resources["prepare_dataset"]
    assert resources["prepare_dataset"]["slurm_partition"] == local_slurm.PARTITION
    assert resources["prepare_dataset"]["mem_mb"] == "6000"


GROUPED_STEPS = 60


def grouped_config():
    """Four tiny runs (two models x two seeds) packed into one job: cluster.runs_per_gpu 4."""
    config = cluster_config()
    experiment = config["experiments"]["tiny"]
    experiment["seeds"] = [0, 1]
    experiment["training"].update(max_steps=GROUPED_STEPS, val_every=20, checkpoint_every=20)
    config["cluster"] = {"runs_per_gpu": 4}
    return config


def test_four_runs_packed_into_one_slurm_job_equal_ungrouped_runs(slurm, tmp_path):
    """Job groups (issue 16): the jobs of 4 runs (train + evaluate, or a baseline's
    fit_and_evaluate) are one sbatch job, each run keeps its
    own log, and the metrics equal, byte for byte, those of ungrouped local runs. The node has
    2 CPUs: ``--cores 2`` makes Snakemake stack the group's 4 one-thread runs 2 by 2."""
    env = slurm["env"]
    dirs = {}
    for name in ("local", "grouped"):
        dirs[name] = tmp_path / name
        dirs[name].mkdir()
        (dirs[name] / "config.yaml").write_text(yaml.safe_dump(grouped_config()))
    local = subprocess.Popen(snakemake_cmd(dirs["local"], "--cores", "2", TARGET),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    grouped = subprocess.run(
        snakemake_cmd(dirs["grouped"], "--workflow-profile",
                      str(ROOT / "workflow/profiles/slurm-cpu"), *THREADS, *SLURM_TEST_FLAGS,
                      "--cores", "2", TARGET, "--group-components", "runs=4"),
        capture_output=True, text=True, env=env, timeout=600)
    out = grouped.stdout + grouped.stderr
    local_out, _ = local.communicate(timeout=600)
    assert grouped.returncode == 0, out[-5000:]
    assert local.returncode == 0, local_out[-5000:]

    submissions = re.findall(r"Job (\S+) has been submitted with SLURM jobid (\d+)", out)
    group_ids = [job for job, _ in submissions if not job.isdigit()]
    assert len(group_ids) == 1, submissions  # one sbatch job for the whole group
    assert out.count("Group job runs") == 1
    # the group's members are listed indented under "Group job runs"; every job submitted on
    # its own is a data job
    # sams_vae trains and evaluates in two jobs, the baseline fits and evaluates in one
    assert len(re.findall(r"^\s+rule train:$", out, re.M)) == 2
    assert len(re.findall(r"^\s+rule evaluate:$", out, re.M)) == 2
    assert len(re.findall(r"^\s+rule fit_and_evaluate:$", out, re.M)) == 2
    jobs, _, _ = parse_run(out)
    single = {int(job) for job, _ in submissions if job.isdigit()}
    assert {jobs[j][1] for j in single} <= {"prepare_dataset", "make_split"}, submissions
    group_slurm_id = dict(submissions)[group_ids[0]]
    assert slurm_job(env, group_slurm_id).get("JobState") == "COMPLETED"

    for seed in (0, 1):
        for model in ("sams_vae", "additive_mean"):
            run = f"tiny/{model}/random/seed{seed}"
            assert (dirs["grouped"] / f"results/logs/train/{run}.log").exists()
            if model == "sams_vae":  # the baseline's one job logs as train
                assert (dirs["grouped"] / f"results/logs/evaluate/{run}.log").exists()
            for name in ("metrics.tsv", "summary.json"):
                path = f"results/tiny/runs/{model}/random/seed{seed}/{name}"
                if name == "summary.json":  # timings differ; every number else must not
                    import json

                    a, b = (json.loads((dirs[d] / path).read_text()) for d in dirs)
                    a.pop("timing"), b.pop("timing")
                    assert a == b
                else:
                    assert (dirs["grouped"] / path).read_bytes() == (dirs["local"] / path).read_bytes()
    assert (dirs["grouped"] / TARGET).read_bytes() == (dirs["local"] / TARGET).read_bytes()
