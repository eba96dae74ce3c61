# samsbench: the SAMS-VAE paper's benchmark, from raw data to figures.
# Default: the embedded simulated benchmark (config.yaml). See README.md.
import os
import sys

from snakemake.utils import min_version

# this checkout's package (workflow/samsbench), installed or not
sys.path.insert(0, os.path.join(workflow.basedir, "workflow"))

min_version("8.20")

# jobs stop when this process is gone (workflow/scripts/_log.py: watch_snakemake); set here,
# not asked of users
os.environ.update(SAMSBENCH_SNAKEMAKE_PID=str(os.getpid()))

# config.yaml and each --configfile: a syntax error names its line and column, a key written
# twice both its lines (Snakemake's loader would keep the last one silently)
from samsbench.config import read_yaml

for _path in ["config.yaml"] + list(
    getattr(workflow, "overwrite_configfiles", None) or []
):
    if os.path.exists(_path):
        read_yaml(str(_path))


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/download.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/scores.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/enrich.smk"
include: "workflow/rules/planted.smk"
include: "workflow/rules/mask_stability.smk"
include: "workflow/rules/paper_common.smk"
include: "workflow/rules/paper.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets(),
