import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

_log.setup(snakemake)
from samsbench.stages import data  # noqa: E402

source = snakemake.params.source
data.download(
    source["urls"],
    snakemake.output[0],
    sha256=source.get("sha256"),
    checksums_tsv=snakemake.params.checksums,
    require_checksum=bool(snakemake.params.require_checksum),
    deadline=snakemake.params.limits["deadline_seconds"],
    min_rate=snakemake.params.limits["min_bytes_per_second"],
    rate_window=snakemake.params.limits["rate_window_seconds"],
)
