"""Send a rule script's logging, warnings and stderr to the rule's log file."""

import logging
import os
import sys

# The package next to the scripts (workflow/samsbench) comes first: a rule runs this
# checkout's code, also in a --sdm conda environment that holds only the dependencies.
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))


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
