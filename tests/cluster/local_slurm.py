"""A throw-away one-node Slurm on this machine, for testing the cluster profiles.

    python tests/cluster/local_slurm.py up   STATE_DIR   # install if missing, start, wait idle
    python tests/cluster/local_slurm.py env  STATE_DIR   # prints: export SLURM_CONF=...
    python tests/cluster/local_slurm.py down STATE_DIR   # stops only what `up` started

`up` needs root and a Debian-like system with apt when Slurm or munge are missing: it installs
Debian's ``slurm-wlm`` and ``munge``, reuses a munged that already answers (else starts one as
the munge user), writes ``STATE_DIR/slurm.conf`` for this machine (``slurmd -C`` topology,
RealMemory minus headroom, free ports, one non-default partition ``cpu``) and starts slurmctld
and slurmd in the foreground of their own sessions. Their pids go to ``STATE_DIR/started.pids``;
`down` signals exactly those (after checking each pid still runs the program it started) and
nothing else. Clients find the cluster through ``SLURM_CONF=STATE_DIR/slurm.conf``.

Used by tests/test_cluster.py; see docs/cluster.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PARTITION = "cpu"  # deliberately not the default partition: jobs must name it (SBATCH_PARTITION)
PACKAGES = ["slurm-wlm", "munge"]
PROGRAMS = ["slurmctld", "slurmd", "sbatch", "srun", "squeue", "sinfo", "scontrol", "scancel",
            "munged", "munge", "unmunge"]
MUNGE_DIRS = ["/etc/munge", "/run/munge", "/var/lib/munge", "/var/log/munge"]
MUNGE_KEY = "/etc/munge/munge.key"


class Unavailable(RuntimeError):
    """Slurm cannot be started on this machine; the message says why."""


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def _run(cmd, timeout=60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def missing_programs() -> list[str]:
    return [p for p in PROGRAMS if _which(p) is None]


def ensure_installed(log=print) -> None:
    """Install slurm-wlm and munge with apt when a program is missing."""
    missing = missing_programs()
    if not missing:
        return
    if os.geteuid() != 0:
        raise Unavailable(f"Slurm is not installed ({', '.join(missing)} missing) and this "
                          "process is not root, so it cannot apt-get install slurm-wlm munge")
    if not (Path("/etc/debian_version").exists() and _which("apt-get")):
        raise Unavailable(f"Slurm is not installed ({', '.join(missing)} missing) and this is "
                          "not a Debian-like system with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log(f"installing {' '.join(PACKAGES)} with apt-get (missing: {', '.join(missing)})")
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]):
        try:
            result = _run(cmd, timeout=900, env=env)
        except subprocess.TimeoutExpired:
            raise Unavailable(f"{' '.join(cmd)} timed out")
        if result.returncode != 0:
            raise Unavailable(f"{' '.join(cmd)} failed ({result.returncode}): "
                              f"{(result.stdout + result.stderr)[-1500:]}")
    still = missing_programs()
    if still:
        raise Unavailable(f"after apt-get install, still missing: {', '.join(still)}")


def munge_works() -> bool:
    try:
        cred = _run(["munge", "-n"], timeout=10)
        if cred.returncode != 0:
            return False
        return _run(["unmunge"], input=cred.stdout, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _start(cmd, log_path: Path, **kw) -> subprocess.Popen:
    with open(log_path, "ab") as out:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True, **kw)


def _record(state: Path, name: str, proc: subprocess.Popen) -> None:
    with open(state / "started.pids", "a") as fh:
        fh.write(f"{name} {proc.pid}\n")


def ensure_munge(state: Path) -> None:
    if munge_works():
        return
    if os.geteuid() != 0:
        raise Unavailable("munged is not running and this process is not root")
    import grp
    import pwd

    try:
        uid, gid = pwd.getpwnam("munge").pw_uid, grp.getgrnam("munge").gr_gid
    except KeyError:
        raise Unavailable("there is no munge user (is the munge package installed?)")
    for d in MUNGE_DIRS:
        os.makedirs(d, exist_ok=True)
    if not os.path.exists(MUNGE_KEY):
        with open(MUNGE_KEY, "wb") as fh:
            fh.write(os.urandom(1024))
    for d in MUNGE_DIRS:
        for root, dirs, files in os.walk(d):
            for name in [root] + [os.path.join(root, f) for f in dirs + files]:
                os.chown(name, uid, gid)
    os.chmod(MUNGE_KEY, 0o400)
    os.chmod("/etc/munge", 0o700)
    proc = _start(["munged", "--foreground"], state / "munged.log", user=uid, group=gid,
                  extra_groups=[])
    _record(state, "munged", proc)
    deadline = time.time() + 20
    while time.time() < deadline:
        if munge_works():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise Unavailable(f"munged did not start: {_tail(state / 'munged.log')}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def node_line(host: str) -> str:
    """This machine as `slurmd -C` sees it, RealMemory lowered to leave the OS some room."""
    result = _run(["slurmd", "-C"], timeout=30)
    line = next((l for l in result.stdout.splitlines() if l.startswith("NodeName=")), None)
    if line is None:
        cpus = os.cpu_count() or 1
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        line = f"NodeName={host} CPUs={cpus} RealMemory={mem}"
    fields = dict(f.split("=", 1) for f in line.split())
    real = int(fields.get("RealMemory", 2048))
    fields["RealMemory"] = str(max(512, real - max(1024, real // 10)))
    fields["NodeName"] = host
    return " ".join(f"{k}={v}" for k, v in fields.items()) + " State=UNKNOWN"


def write_conf(state: Path, host: str) -> Path:
    spool, logs = state / "spool", state / "log"
    for d in (state / "ctld", spool, logs):
        d.mkdir(parents=True, exist_ok=True)
    conf = f"""# one-node Slurm written by tests/cluster/local_slurm.py
ClusterName=samsbench
SlurmctldHost={host}
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={state / 'ctld'}
SlurmdSpoolDir={spool}
SlurmctldLogFile={logs / 'slurmctld.log'}
SlurmdLogFile={logs / 'slurmd.log'}
SlurmctldPidFile={state / 'slurmctld.pid'}
SlurmdPidFile={state / 'slurmd.pid'}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MinJobAge=300
KillWait=10
{node_line(host)}
PartitionName={PARTITION} Nodes={host} Default=NO MaxTime=INFINITE State=UP
"""
    path = state / "slurm.conf"
    path.write_text(conf)
    return path


def write_srun_shim(state: Path) -> Path:
    """``STATE/bin/srun``: srun with SLURM_CONF set.

    Inside a job, the plugin's job step runs ``srun`` with every SLURM_* variable but the job's
    identity removed, SLURM_CONF included, so srun would only look at the default path
    (/etc/slurm/slurm.conf). Rather than writing there, clients get ``STATE/bin`` first on PATH
    (sbatch --export=ALL carries PATH into the job) and this shim puts SLURM_CONF back.
    """
    shim = state / "bin" / "srun"
    shim.parent.mkdir(parents=True, exist_ok=True)
    path = [d for d in os.environ.get("PATH", "").split(":") if d and Path(d) != shim.parent]
    srun = shutil.which("srun", path=":".join(path + ["/usr/bin", "/usr/local/bin"]))
    shim.write_text(f'#!/bin/sh\nSLURM_CONF="{state / "slurm.conf"}" exec {srun} "$@"\n')
    shim.chmod(0o755)
    return shim.parent


def client_env(state: Path) -> dict:
    """Environment for Slurm clients (sbatch, squeue, Snakemake) of this cluster."""
    state = Path(state).resolve()
    return {**os.environ, "SLURM_CONF": str(state / "slurm.conf"),
            "PATH": f"{state / 'bin'}:{os.environ.get('PATH', '')}"}


def node_state(state: Path) -> str:
    result = _run(["sinfo", "-h", "-N", "-o", "%t"], env=client_env(state), timeout=15)
    return result.stdout.strip() if result.returncode == 0 else ""


def up(state: str | os.PathLike, log=print) -> Path:
    """Start the cluster; raises Unavailable (after stopping what it started) when it cannot."""
    state = Path(state).resolve()
    state.mkdir(parents=True, exist_ok=True)
    try:
        ensure_installed(log)
        if os.geteuid() != 0:
            raise Unavailable("slurmctld and slurmd run as root here and this process is not root")
        ensure_munge(state)
        host = socket.gethostname().split(".")[0]
        conf = write_conf(state, host)
        write_srun_shim(state)
        for name in ("slurmctld", "slurmd"):
            proc = _start([name, "-D", "-f", str(conf)], state / f"{name}.out")
            _record(state, name, proc)
            time.sleep(0.5)
            if proc.poll() is not None:
                raise Unavailable(f"{name} exited at start: {_tail(state / f'{name}.out')} "
                                  f"{_tail(state / 'log' / f'{name}.log')}")
        deadline = time.time() + 60
        last = ""
        while time.time() < deadline:
            last = node_state(state)
            if last.startswith("idle") or last.startswith("mix"):
                log(f"local Slurm up: SLURM_CONF={conf} node {host} {last}, partition {PARTITION}")
                return conf
            if last.startswith(("drain", "down")):
                _run(["scontrol", "update", f"nodename={host}", "state=resume"],
                     env=client_env(state), timeout=15)
            time.sleep(0.5)
        raise Unavailable(f"the node did not become idle within 60 s (state {last!r}): "
                          f"{_tail(state / 'log' / 'slurmd.log')}")
    except Unavailable:
        down(state)
        raise
    except (OSError, subprocess.SubprocessError) as err:
        down(state)
        raise Unavailable(f"{type(err).__name__}: {err}")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def cancel_all_jobs(state: Path, timeout: float = 30) -> None:
    """Cancel every job of this private cluster and wait for them to end, so that no job step
    (slurmstepd and its processes) outlives the daemons."""
    env = client_env(state)
    try:
        _run(["scancel", f"--partition={PARTITION}"], env=env, timeout=15)
        deadline = time.time() + timeout
        while time.time() < deadline:
            queue = _run(["squeue", "-h", "-o", "%i"], env=env, timeout=15)
            if queue.returncode != 0 or not queue.stdout.strip():
                return
            time.sleep(0.5)
    except (OSError, subprocess.SubprocessError):
        pass


def down(state: str | os.PathLike) -> list[str]:
    """Cancel the cluster's jobs, then stop the daemons `up` started (newest first); returns
    their names."""
    state = Path(state)
    pids_file = state / "started.pids"
    if not pids_file.exists():
        return []
    started = [line.split() for line in pids_file.read_text().splitlines() if line.strip()]
    if any(name == "slurmd" and "slurmd" in _cmdline(int(pid)) for name, pid in started):
        cancel_all_jobs(state)
    stopped = []
    for name, pid in reversed(started):
        pid = int(pid)
        if name not in _cmdline(pid):
            continue  # already gone (or the pid was reused by another program)
        os.kill(pid, signal.SIGTERM)
        deadline = time.time() + 15
        while name in _cmdline(pid) and time.time() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)  # reap it when it is our child
            except ChildProcessError:
                pass
            time.sleep(0.1)
        if name in _cmdline(pid):
            os.kill(pid, signal.SIGKILL)
        stopped.append(name)
    pids_file.unlink()
    return stopped


def _tail(path: Path, n: int = 800) -> str:
    try:
        return Path(path).read_text(errors="replace")[-n:]
    except OSError:
        return ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["up", "down", "env"])
    parser.add_argument("state", help="folder for slurm.conf, state, spool, logs and pids")
    args = parser.parse_args(argv)
    if args.action == "up":
        try:
            up(args.state)
        except Unavailable as err:
            print(f"cannot start a local Slurm: {err}", file=sys.stderr)
            return 1
    elif args.action == "down":
        print("stopped: " + (", ".join(down(args.state)) or "nothing"))
    else:
        state = Path(args.state).resolve()
        print(f"export SLURM_CONF={state / 'slurm.conf'} PATH={state / 'bin'}:$PATH")
    return 0


if __name__ == "__main__":
    sys.exit(main())
