"""One entry point for the prepare step: a dataset's config block to a contract h5ad.

``source`` chooses the route: ``simulate`` (the embedded benchmark), ``h5ad`` (a user's file
that already meets the contract: validated and copied), ``replogle_prepared`` (the authors'
filtered file), ``replogle_raw`` (Replogle's raw genome-wide file), ``norman`` (sc-pert's
processed Norman file) and ``mcfaline`` (the McFaline-Figueroa 2023 cells of PerturBench's
devel.h5ad, counts recovered from its normalised values). ``counts_sha256`` (sources h5ad and
mcfaline) pins the counts (samsbench.data.mcfaline.counts_sha256). Remote inputs live in ``data/downloads/<name>``, where the download
rule puts them; a block may name another download with ``download: <name>``.
"""

from __future__ import annotations

import logging
import os
import shutil

from samsbench.data import contract

log = logging.getLogger(__name__)

DOWNLOAD_DIR = "data/downloads"
SOURCES = ("simulate", "h5ad", "replogle_prepared", "replogle_raw", "norman", "mcfaline")
# The download each remote source reads by default (keys of config.yaml's `downloads:`).
DEFAULT_DOWNLOAD = {
    "replogle_prepared": "replogle.h5ad",
    "replogle_raw": "K562_gwps_raw_singlecell_01.h5ad",
    "norman": "norman_scpert.h5ad",
    "mcfaline": "perturbench_devel.h5ad",
}


def _source(dataset_cfg: dict) -> str:
    source = dataset_cfg.get("source")
    if source not in SOURCES:
        raise ValueError(f"unknown dataset source {source!r}; expected one of {SOURCES}")
    return source


def required_inputs(dataset_cfg: dict) -> list[str]:
    """Files the prepare step reads (the download rule makes those under data/downloads)."""
    source = _source(dataset_cfg)
    if source == "simulate":
        return []
    if source == "h5ad":
        if not dataset_cfg.get("path"):
            raise ValueError('a dataset with source "h5ad" needs `path:` naming the file')
        return [os.fspath(dataset_cfg["path"])]
    name = dataset_cfg.get("download") or DEFAULT_DOWNLOAD[source]
    return [f"{DOWNLOAD_DIR}/{name}"]


def prepare_dataset(dataset_cfg: dict, inputs: list[str], out_path) -> None:
    """Write the contract file of one dataset to ``out_path``."""
    source = _source(dataset_cfg)
    expected = len(required_inputs(dataset_cfg))
    if len(inputs) != expected:
        raise ValueError(f"source {source!r} needs {expected} input file(s), got {inputs}")
    if source == "simulate":
        from samsbench.data.simulate import simulate

        contract.write(simulate(**dataset_cfg.get("simulate", {})), out_path)
    elif source == "h5ad":
        adata = contract.read(inputs[0])  # validates; errors name the file and the broken rule
        if dataset_cfg.get("counts_sha256"):
            from samsbench.data.mcfaline import check_counts_sha256

            check_counts_sha256(adata, dataset_cfg["counts_sha256"], inputs[0])
        _copy_atomic(inputs[0], out_path)
    elif source == "replogle_prepared":
        from samsbench.data.replogle import prepare_from_prepared

        prepare_from_prepared(inputs[0], out_path)
    elif source == "replogle_raw":
        from samsbench.data.replogle import prepare_from_raw

        prepare_from_raw(
            inputs[0],
            out_path,
            chunk_rows=dataset_cfg.get("chunk_rows"),
            n_controls=dataset_cfg.get("n_controls", 2000),
        )
    elif source == "mcfaline":
        from samsbench.data.mcfaline import prepare_mcfaline

        prepare_mcfaline(inputs[0], out_path,
                         counts_sha256_expected=dataset_cfg.get("counts_sha256"))
    else:
        from samsbench.data.norman import prepare_norman

        prepare_norman(
            inputs[0], out_path, highly_variable_only=dataset_cfg.get("highly_variable_only", True)
        )
    log.info("prepared %s dataset at %s", source, out_path)


def _copy_atomic(src, dst) -> None:
    dst = os.fspath(dst)
    os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
    tmp = f"{dst}.tmp-{os.getpid()}"
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
