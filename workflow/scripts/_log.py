"""Send a rule script's logging, warnings and stderr to the rule's log file."""

import logging
import os
import signal
import sys
import threading
import time

# The package next to the scripts (workflow/samsbench) comes first: a rule runs this
# checkout's code, also in a --sdm conda environment that holds only the dependencies.
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))


# The Snakemake process that runs this job (set by the Snakefile in every Snakemake process).
SNAKEMAKE_PID = "SAMSBENCH_SNAKEMAKE_PID"


def _gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive (another user's process)
        return False
    try:  # a killed process that nobody has reaped yet is a zombie: gone as well
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def watch_snakemake(pid=None, interval=2.0):
    """Stop this job with SIGTERM when Snakemake's process is gone: killing only Snakemake
    (SIGKILL) would otherwise leave its jobs running, unseen. Training saves resume.pt on
    SIGTERM, so the next run resumes where this one stopped."""
    pid = int(pid or os.environ.get(SNAKEMAKE_PID) or 0)
    if pid <= 0 or pid == os.getpid():
        return

    def watch():
        while not _gone(pid):
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="watch-snakemake", daemon=True).start()


def setup(snakemake):
    path = snakemake.log[0] if len(snakemake.log) else None
    if path:
        handle = open(path, "a", buffering=1)
        sys.stderr = handle
        sys.stdout = handle
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    logging.captureWarnings(True)
    watch_snakemake()
