"""The data steps: prepare a dataset (config block -> contract h5ad) and split it.

Dataset readers form one registry, ``READERS``: each source names the download it reads by
default (None: no input file, or a ``path:`` of the block) and a function that writes the
contract file. Adding a reader is one entry here (docs/architecture.md). Remote inputs live in
``data/downloads/<name>``, where the download rule puts them; a block may name another
download with ``download: <name>``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from samsbench import io as sbio
from samsbench.data import contract, splits

log = logging.getLogger(__name__)

DOWNLOAD_DIR = "data/downloads"


@dataclass(frozen=True)
class Reader:
    """One dataset source: ``prepare(block, input_path_or_None, out_path)`` writes the
    contract h5ad; ``download`` is the default file under data/downloads, ``path_input``
    says the input is the block's own ``path:`` (a user's file). ``planted_mask``: the file
    carries a true mask in ``uns["simulation"]`` (the workflow scores mask recovery);
    ``gene_symbols``: var names are real gene symbols (gene-set enrichment needs them);
    ``annotations``: the dataset's own gene-set libraries its prepared file holds
    ('pathways': uns["pathways"], 'programs': planted programs), None when unknown before
    preparing."""

    prepare: Callable[[dict, str | None, str], None]
    download: str | None = None
    path_input: bool = False
    planted_mask: bool = False
    gene_symbols: bool = True
    annotations: tuple[str, ...] | None = None


def _simulate(block, _input, out):
    from samsbench.data.simulate import simulate

    contract.write(simulate(**block.get("simulate", {})), out)


def _reference_sim(block, _input, out):
    """Data like the reference's own Gaussian simulator (its simulate_data_sams_vae): continuous values,
    no control cells, a planted mask (docs/mask_recovery.md)."""
    from samsbench.data.reference_sim import reference_dataset

    contract.write(reference_dataset(**block.get("simulate", {})), out)


COUNTS_LAYER = "counts"


def _h5ad(block, path, out):
    """A user's contract file, its labels normalised: control components dropped
    (``KLF1+ctrl`` -> ``KLF1``, ``ctrl+ctrl`` -> ``ctrl``) and components sorted (``B+A`` ->
    ``A+B``). Raw counts in ``layers["counts"]`` (scanpy's common layout, X normalised or
    absent) become X. Then validated (errors name the file and the broken rule) and, with
    ``counts_sha256``, its counts checked against the pin; copied unchanged when nothing
    changed."""
    adata = contract.read(path, check=False)
    key = contract.PERTURBATION_KEY
    changed = 0
    # (a file that declares continuous values keeps its X)
    if (COUNTS_LAYER in adata.layers and adata.uns.get(contract.VALUE_KIND_KEY, "counts") == "counts"
            and (adata.X is None or not contract.holds_counts(adata.X))):
        log.warning('%s: X is %s; using layers["%s"] as the raw counts', path,
                    "absent" if adata.X is None else "not raw counts", COUNTS_LAYER)
        adata.X = adata.layers[COUNTS_LAYER]
        del adata.layers[COUNTS_LAYER]
        changed = 1
    if key in adata.obs.columns and not adata.obs[key].isna().any():
        labels, relabelled = contract.normalise_labels(adata.obs[key],
                                                       contract.control_label(adata))
        changed += relabelled
        if relabelled:
            before = adata.obs[key].astype(str).to_numpy()
            examples = sorted({f"{a} -> {b}" for a, b in zip(before, labels) if a != b})[:5]
            log.info("%s: normalised the perturbation label of %d cells (%s)", path, relabelled,
                     "; ".join(examples))
            adata.obs[key] = labels
    try:
        contract.validate(adata)
    except contract.ContractError as exc:
        raise contract.ContractError(f"{path}: {exc}") from None
    if block.get("counts_sha256"):
        from samsbench.data.mcfaline import check_counts_sha256

        check_counts_sha256(adata, block["counts_sha256"], path)
    if changed:
        contract.write(adata, out)
    else:
        sbio.copy_file(path, out)


def _replogle_prepared(_block, path, out):
    from samsbench.data.replogle import prepare_from_prepared

    prepare_from_prepared(path, out)


def _replogle_raw(block, path, out):
    from samsbench.data.replogle import prepare_from_raw

    prepare_from_raw(path, out, chunk_rows=block.get("chunk_rows"),
                     n_controls=block.get("n_controls", 2000))


def _norman(block, path, out):
    from samsbench.data.norman import prepare_norman

    prepare_norman(path, out, highly_variable_only=block.get("highly_variable_only", True))


def _mcfaline(block, path, out):
    """McFaline-Figueroa 2023 cells of PerturBench's devel.h5ad, counts recovered from its
    log1p-normalised values and checked against ``counts_sha256`` (docs/real_screen.md)."""
    from samsbench.data.mcfaline import prepare_mcfaline

    prepare_mcfaline(path, out, counts_sha256_expected=block.get("counts_sha256"))


READERS: dict[str, Reader] = {
    "simulate": Reader(_simulate, planted_mask=True, annotations=("pathways", "programs")),
    # genes are named g0, g1, ...: no gene-set enrichment
    "reference_sim": Reader(_reference_sim, planted_mask=True, gene_symbols=False),
    "h5ad": Reader(_h5ad, path_input=True),
    "replogle_prepared": Reader(_replogle_prepared, download="replogle.h5ad",
                                annotations=("pathways",)),
    "replogle_raw": Reader(_replogle_raw, download="K562_gwps_raw_singlecell_01.h5ad",
                           annotations=("pathways",)),
    "norman": Reader(_norman, download="norman_scpert.h5ad", annotations=()),
    "mcfaline": Reader(_mcfaline, download="perturbench_devel.h5ad", annotations=()),
}


def dataset_annotations(dataset_cfg: dict) -> set[str] | None:
    """The dataset's own libraries ('pathways', 'programs') its prepared file will have,
    known before preparing: from the reader, or for a user's h5ad from the file's uns (read
    without loading the matrix). None when it cannot be known (the file is not there yet)."""
    found = reader(dataset_cfg)
    if found.annotations is not None:
        return set(found.annotations)
    path = dataset_cfg.get("path")
    if not found.path_input or not path or not os.path.exists(path):
        return None
    import h5py

    def non_empty(f, key):
        return key in f and len(f[key]) > 0

    with h5py.File(path, "r") as f:
        out = {"pathways"} if non_empty(f, "uns/pathways") else set()
        if non_empty(f, "uns/simulation/programs"):
            out.add("programs")
    return out


def reader(dataset_cfg: dict) -> Reader:
    source = dataset_cfg.get("source")
    if source not in READERS:
        raise ValueError(f"unknown dataset source {source!r}; expected one of {sorted(READERS)}")
    return READERS[source]


def required_inputs(dataset_cfg: dict) -> list[str]:
    """Files the prepare step reads (the download rule makes those under data/downloads)."""
    found = reader(dataset_cfg)
    if found.path_input:
        if not dataset_cfg.get("path"):
            raise ValueError(f'a dataset with source "{dataset_cfg["source"]}" needs `path:` '
                             "naming the file")
        return [os.fspath(dataset_cfg["path"])]
    name = dataset_cfg.get("download") or found.download
    return [f"{DOWNLOAD_DIR}/{name}"] if name else []


def prepare_dataset(config: dict, dataset: str, out) -> None:
    """Prepare a dataset named in ``config`` (`samsbench prepare`); the rule calls
    ``prepare`` with the block and the inputs Snakemake resolved."""
    if dataset not in config["datasets"]:
        raise ValueError(f"unknown dataset {dataset!r}; config defines {sorted(config['datasets'])}")
    block = config["datasets"][dataset]
    prepare(block, required_inputs(block), out)


def prepare(dataset_cfg: dict, inputs: list[str], out_path) -> None:
    """Write the contract file of one dataset to ``out_path``."""
    found = reader(dataset_cfg)
    expected = len(required_inputs(dataset_cfg))
    if len(inputs) != expected:
        raise ValueError(f"source {dataset_cfg['source']!r} needs {expected} input file(s), "
                         f"got {inputs}")
    found.prepare(dataset_cfg, inputs[0] if inputs else None, os.fspath(out_path))
    log.info("prepared %s dataset at %s", dataset_cfg["source"], out_path)
    warn_all_zero_genes(os.fspath(out_path))


def warn_all_zero_genes(path: str, chunk_rows: int = 8192) -> int:
    """Count the genes with no count in any cell; one warning naming the count (a model
    sampled at 10,000 counts per cell, the paper's ATE, predicts them a nonzero effect that
    the data cannot have). Continuous datasets are skipped. Returns the count."""
    import anndata as ad
    import numpy as np

    adata = ad.read_h5ad(path, backed="r")  # X read in row blocks
    try:
        if contract.value_kind(adata) != "counts":
            return 0
        totals = np.zeros(adata.n_vars)
        for start in range(0, adata.n_obs, chunk_rows):
            block = adata.X[start:start + chunk_rows]
            totals += np.asarray(abs(block).sum(axis=0)).ravel()
        zero = int((totals == 0).sum())
    finally:
        adata.file.close()
    if zero:
        log.warning("%s: %d of %d genes have no count in any cell; the paper's ATE (cells drawn "
                    "at 10,000 counts) gives them a spurious effect, the depth-matched ATE of "
                    "the benchmark's metrics does not; consider dropping them", path, zero,
                    len(totals))
    return zero


def split(data_path: str, split_cfg: dict, out_path: str) -> None:
    """Write the split TSV (cell_id, split) of one split block."""
    adata = contract.read(data_path)
    # Norman: the reference shuffles guide identities, not gene labels (see splits.ood_split).
    ids = adata.obs["guide_identity"].astype(str).to_numpy() if "guide_identity" in adata.obs else None
    labels = splits.make_split(
        adata.obs[contract.PERTURBATION_KEY].to_numpy(), split_cfg["kind"],
        seed=int(split_cfg.get("seed", 0)), fraction=float(split_cfg.get("fraction", 1.0)),
        test_fraction=float(split_cfg.get("test_fraction", 0.25)), combination_ids=ids,
        control=contract.control_label(adata),
    )
    splits.write_split(adata.obs_names, labels, out_path)
    counts = pd.Series(labels).value_counts().to_dict()
    log.info("split %s of %s: %s", split_cfg, data_path, counts)


def simulate(out_path: str, seed: int = 0, **params) -> None:
    """Write the simulated screen (samsbench.data.simulate arguments) as a contract h5ad."""
    from samsbench.data.simulate import simulate as draw

    contract.write(draw(seed=seed, **params), out_path)


def download(urls: list[str], out_path: str, sha256: str | None = None,
             checksums_tsv: str | None = None, require_checksum: bool = False,
             **options) -> None:
    """Fetch one remote input: mirrors in order, format and sha256 checks, atomic rename."""
    from samsbench.data.download import download as fetch

    fetch(urls, out_path, sha256=sha256, checksums_tsv=checksums_tsv,
          require_checksum=require_checksum, **options)
