"""Send a rule script's logging, warnings and stderr to the rule's log file."""

import logging
import sys


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
