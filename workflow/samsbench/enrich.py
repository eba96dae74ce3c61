"""Enrichment of learned masks against gene-set libraries, and recovery of known complexes.

Beyond the reference implementation (which has no enrichment code; see DESIGN.md). Three parts:

* gene-set sources: GMT files from an installed package (blitzgsea ships Enrichr's
  GO_Biological_Process_2023 and KEGG_2021_Human), downloads with checksums, any local GMT, and
  the dataset's own annotation (``uns["pathways"]``, or the planted programs of the simulation);
* over-representation analysis (ORA) per latent dimension: the targets of the perturbations whose
  mask probability passes a threshold, tested with gseapy's offline hypergeometric test against
  each library, with the perturbed target genes of the model as background;
* complex recovery: are perturbations whose targets share a gene set more similar (mask Jaccard,
  |embedding cosine|, |effect correlation|) than other pairs? One AUROC and average precision per
  run and similarity, so that every model, baselines included, compares on one number.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import zipfile
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

COMBINATION_SEP = "+"
DEFAULT_THRESHOLD = 0.5
MIN_SET_SIZE = 3
DEFAULT_CHECKSUMS = "data/checksums.tsv"
# Layers of perturbation_latents.h5ad (see the run-directory contract).
MASK_LAYER = "mask_prob"
EMBEDDING_LAYER = "embedding_mean"

ENRICHMENT_COLUMNS = [
    "model",
    "split",
    "seed",
    "library",
    "latent_dim",
    "term",
    "overlap",
    "set_size",
    "pvalue",
    "fdr",
    "query_size",
    "background_size",
    "genes",
]
RECOVERY_COLUMNS = [
    "model",
    "split",
    "seed",
    "library",
    "similarity",
    "auroc",
    "average_precision",
    "n_perturbations",
    "n_pairs",
    "n_positive_pairs",
    "family",
]
PROGRAM_COLUMNS = [
    "model",
    "split",
    "seed",
    "library",
    "program",
    "latent_dim",
    "jaccard",
    "top_term",
    "top_fdr",
    "program_fdr",
    "recovered",
]

# The default sources, identical to the `gene_sets:` block of config.yaml; used when a caller
# (the CLI outside the workflow, tests) gives no config.
_ENRICHR = "https://maayanlab.cloud/Enrichr/geneSetLibrary?mode=text&libraryName="
DEFAULT_GENE_SETS: dict[str, dict] = {
    "GO_Biological_Process_2023": {
        "source": "package",
        "package": "blitzgsea",
        "library": "GO_Biological_Process_2023",
        "version": "Enrichr GO_Biological_Process_2023, as shipped in the blitzgsea package",
        "licence": "Gene Ontology: CC BY 4.0",
    },
    "KEGG_2021_Human": {
        "source": "package",
        "package": "blitzgsea",
        "library": "KEGG_2021_Human",
        "version": "Enrichr KEGG_2021_Human, as shipped in the blitzgsea package",
        "licence": "KEGG: academic use only (kegg.jp/kegg/legal.html); never committed",
    },
    "pathways": {
        "source": "pathways",
        "version": "the dataset's uns['pathways']",
        "licence": "as the dataset",
    },
    "programs": {
        "source": "programs",
        "version": "the simulation's planted programs, uns['simulation']['programs']",
        "licence": "generated",
    },
    "CORUM": {
        "source": "url",
        "urls": [_ENRICHR + "CORUM"],
        "sha256": None,
        "path": "data/gene_sets/CORUM.gmt",
        "version": "CORUM human complexes as served by Enrichr (checksum recorded on first download)",
        "licence": "CORUM: free for academic, non-commercial use; never committed",
    },
    "Reactome_Pathways": {
        "source": "url",
        "urls": ["https://reactome.org/download/current/ReactomePathways.gmt.zip"],
        "sha256": None,
        "path": "data/downloads/ReactomePathways.gmt.zip",
        "version": "Reactome 'current' release (checksum recorded on first download)",
        "licence": "Reactome: CC BY 4.0",
    },
    "MSigDB_GO_BP": {
        "source": "url",
        "urls": [
            "https://data.broadinstitute.org/gsea-msigdb/msigdb/release/2023.2.Hs/"
            "c5.go.bp.v2023.2.Hs.symbols.gmt"
        ],
        "sha256": None,
        "path": "data/gene_sets/MSigDB_GO_BP.gmt",
        "version": "MSigDB 2023.2.Hs C5 GO:BP, gene symbols",
        "licence": "MSigDB C5 (Gene Ontology): CC BY 4.0",
    },
    "Enrichr_GO_BP_2023": {
        "source": "url",
        "urls": [_ENRICHR + "GO_Biological_Process_2023"],
        "sha256": None,
        "path": "data/gene_sets/Enrichr_GO_BP_2023.gmt",
        "version": "Enrichr GO_Biological_Process_2023 (checksum recorded on first download)",
        "licence": "Gene Ontology: CC BY 4.0",
    },
}


class GeneSetError(ValueError):
    """A gene-set library cannot be found or read."""


# --------------------------------------------------------------------------------------------
# Gene-set sources
# --------------------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    """The text of a GMT, reading the single GMT inside a zip archive (Reactome ships one)."""
    data = path.read_bytes()
    if data[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            members = [n for n in zf.namelist() if not n.endswith("/")]
            gmts = [n for n in members if n.lower().endswith((".gmt", ".txt"))] or members
            if len(gmts) != 1:
                raise GeneSetError(f"{path}: expected one GMT inside the zip archive, found {gmts}")
            data = zf.read(gmts[0])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise GeneSetError(f"{path}: not a UTF-8 text GMT file ({err})") from None


def parse_gmt(path: str | os.PathLike) -> dict[str, set[str]]:
    """Read a GMT file: one set per line, ``name<TAB>description<TAB>gene<TAB>gene...``.

    Enrichr leaves the description blank and ends lines with a tab; both are fine. Duplicate
    genes collapse, a set named twice is merged, and sets left empty are dropped (each with a
    log note). A line without a tab, or with an empty name, is an error naming file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise GeneSetError(f"gene-set file not found: {path}")
    sets: dict[str, set[str]] = {}
    n_dup_genes = 0
    empty: list[str] = []
    for lineno, raw in enumerate(_read_text(path).splitlines(), start=1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue  # blank lines carry nothing; GMT has no other kind of non-set line
        fields = line.split("\t")
        if len(fields) < 2:
            raise GeneSetError(
                f"{path}:{lineno}: malformed GMT line (expected tab-separated name, "
                f"description, genes; found no tab): {line[:80]!r}"
            )
        name = fields[0].strip()
        if not name:
            raise GeneSetError(f"{path}:{lineno}: malformed GMT line (empty gene-set name)")
        genes = [g.strip() for g in fields[2:]]
        genes = [g for g in genes if g]
        n_dup_genes += len(genes) - len(set(genes))
        if name in sets:
            log.info("%s:%d: gene set %r appears again; merged", path, lineno, name)
        sets.setdefault(name, set()).update(genes)
    for name in [n for n, g in sets.items() if not g]:
        empty.append(name)
        del sets[name]
    if n_dup_genes:
        log.info("%s: %d duplicate gene entries collapsed", path, n_dup_genes)
    if empty:
        log.warning("%s: dropped %d empty gene set(s): %s", path, len(empty), ", ".join(empty[:5]))
    if not sets:
        raise GeneSetError(f"{path}: no non-empty gene sets found; is this a GMT file?")
    return sets


def parse_corum(path: str | os.PathLike, organism: str = "Human") -> dict[str, set[str]]:
    """Read CORUM's own complex table (tab-separated, one complex per row, subunits by ';')."""
    path = Path(path)
    try:
        table = pd.read_csv(io.StringIO(_read_text(path)), sep="\t", dtype=str)
    except pd.errors.ParserError as err:
        raise GeneSetError(f"{path}: not a CORUM table ({err})") from None
    name_col = next((c for c in ("ComplexName", "complex_name") if c in table), None)
    gene_col = next((c for c in ("subunits(Gene name)", "subunits_gene_name") if c in table), None)
    if name_col is None or gene_col is None:
        raise GeneSetError(
            f"{path}: a CORUM table needs a complex-name column and a subunit gene-name column; "
            f"found {list(table.columns)[:10]}"
        )
    org_col = next((c for c in ("Organism", "organism") if c in table), None)
    if org_col is not None:
        table = table[table[org_col].str.lower() == organism.lower()]
    sets: dict[str, set[str]] = {}
    for name, genes in zip(table[name_col], table[gene_col].fillna("")):
        members = {g.strip() for g in str(genes).split(";") if g.strip() and g.strip() != "None"}
        if members:
            sets.setdefault(str(name), set()).update(members)
    if not sets:
        raise GeneSetError(f"{path}: no complexes with gene names for organism {organism!r}")
    return sets


def write_gmt(gene_sets: Mapping[str, Iterable[str]], path: str | os.PathLike) -> None:
    """Write sets as GMT with a blank description (Enrichr style), sorted for stable diffs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        for name in sorted(gene_sets):
            if "\t" in name or "\n" in name:
                raise GeneSetError(f"gene-set name {name!r} contains a tab or newline")
            fh.write("\t".join([name, "", *sorted(gene_sets[name])]) + "\n")
    os.replace(tmp, path)  # atomic: a killed job leaves no half-written library


def package_gmt_path(package: str, library: str) -> Path:
    """Where an installed package keeps a GMT library (blitzgsea: ``blitzgsea/data/<name>``)."""
    try:
        root = resources.files(package)
    except ModuleNotFoundError:
        raise GeneSetError(
            f"package {package!r} is not installed; it provides the gene-set library {library!r}"
        ) from None
    for candidate in (root / "data" / library, root / "data" / f"{library}.gmt", root / library):
        if candidate.is_file():
            return Path(str(candidate))
    raise GeneSetError(f"package {package!r} has no gene-set library {library!r}")


def _dataset(dataset):
    """An AnnData from a path or an AnnData (read backed: only ``uns`` is needed)."""
    if dataset is None or not isinstance(dataset, (str, os.PathLike)):
        return dataset
    import anndata as ad

    return ad.read_h5ad(dataset, backed="r")


def _label_targets(label: str) -> list[str]:
    """Target genes of a perturbation label when no explicit mapping is stored.

    Combinations join components with '+'; a Replogle guide pair (``GENE_-_123.23-P1P2|...``)
    names its gene before the first '_' (as in the reference's demo notebook).
    """
    return [part.split("_")[0] for part in str(label).split(COMBINATION_SEP) if part]


def _sets_from_uns(dataset, kind: str) -> dict[str, set[str]]:
    adata = _dataset(dataset)
    if adata is None:
        raise GeneSetError(f"the gene-set source {kind!r} needs the dataset (pass --dataset)")
    if kind == "pathways":
        raw = adata.uns.get("pathways")
        where = "uns['pathways']"
    else:
        raw = (adata.uns.get("simulation") or {}).get("programs")
        where = "uns['simulation']['programs']"
    if raw is None or len(raw) == 0:
        raise GeneSetError(f"the dataset has no {where}; choose another gene-set library")
    out = {}
    for name, labels in dict(raw).items():
        labels = [labels] if isinstance(labels, str) else list(np.asarray(labels).ravel())
        genes = {g for lab in labels for g in _label_targets(str(lab))}
        if genes:
            out[str(name)] = genes
    return out


def gene_set_table(config_gene_sets: Mapping | None) -> dict[str, dict]:
    """The built-in sources, overridden and extended by config's ``gene_sets:`` entries."""
    return {**DEFAULT_GENE_SETS, **{k: dict(v) for k, v in (config_gene_sets or {}).items()}}


def _entry(name: str, config_gene_sets: Mapping | None) -> dict | None:
    entry = gene_set_table(config_gene_sets).get(name)
    return None if entry is None else dict(entry)


def source_file(name: str, entry: Mapping, *, checksums_tsv: str | None = DEFAULT_CHECKSUMS):
    """The local file of a package, url or path source, downloading a url source if needed."""
    source = entry.get("source")
    if source == "package":
        return package_gmt_path(entry.get("package", "blitzgsea"), entry.get("library", name))
    if source == "path":
        if "path" not in entry:
            raise GeneSetError(f"gene-set source {name!r}: a 'path' source needs path:")
        return Path(entry["path"])
    if source == "url":
        urls = entry.get("urls") or ([entry["url"]] if entry.get("url") else [])
        if not urls:
            raise GeneSetError(f"gene-set source {name!r}: a 'url' source needs urls:")
        out = Path(entry.get("path") or f"data/gene_sets/{name}.gmt")
        # lazy: the network code is only needed for url sources
        from samsbench.data.download import download, read_checksums

        known = entry.get("sha256") or read_checksums(checksums_tsv).get(out.name, {}).get("sha256")
        if out.is_file() and not known:
            # download() would delete an unverifiable file and fetch it again on every call
            log.info("%s: using %s as present (no checksum known to verify it)", name, out)
        else:
            download(urls, out, sha256=entry.get("sha256"), checksums_tsv=checksums_tsv)
        return out
    raise GeneSetError(
        f"gene-set source {name!r} has unknown source {source!r} "
        "(expected package, url, path, pathways or programs)"
    )


def load_gene_sets(
    name_or_path: str,
    config_gene_sets: Mapping | None = None,
    dataset=None,
    *,
    checksums_tsv: str | None = DEFAULT_CHECKSUMS,
) -> dict[str, set[str]]:
    """Gene sets {term: genes} of a library named in config, or of a GMT file path.

    ``config_gene_sets`` is the ``gene_sets:`` mapping of config.yaml; its entries override
    and extend the built-in ``DEFAULT_GENE_SETS``. ``dataset`` (AnnData or h5ad path) serves the 'pathways' and 'programs' sources.
    """
    entry = _entry(str(name_or_path), config_gene_sets)
    if entry is None:
        path = Path(name_or_path)
        if path.is_file():
            if path.suffix.lower() in (".txt", ".tsv") and "corum" in path.name.lower():
                return parse_corum(path)
            return parse_gmt(path)
        known = sorted(gene_set_table(config_gene_sets))
        raise GeneSetError(
            f"unknown gene-set library {str(name_or_path)!r}: not a name in the gene_sets "
            f"config (known: {', '.join(known)}) and not an existing GMT file"
        )
    source = entry.get("source")
    if source in ("pathways", "programs"):
        return _sets_from_uns(dataset, source)
    path = source_file(str(name_or_path), entry, checksums_tsv=checksums_tsv)
    if entry.get("format", "gmt") == "corum":
        return parse_corum(path)
    return parse_gmt(path)


def library_name(name_or_path: str, config_gene_sets: Mapping | None = None) -> str:
    """The library's name in outputs: the config name, or a GMT file's stem."""
    if _entry(str(name_or_path), config_gene_sets) is not None:
        return str(name_or_path)
    name = Path(name_or_path).name
    for suffix in (".zip", ".gmt", ".txt"):
        name = name[: -len(suffix)] if name.lower().endswith(suffix) else name
    return name


def materialise(name, config_gene_sets, dataset, out, *, allow_empty=True) -> int:
    """Write one library as a normalised GMT (the workflow's per-experiment copy).

    A dataset-derived source the dataset lacks becomes an empty file when ``allow_empty``, so
    that a default library list can name 'pathways' for every experiment.
    """
    try:
        sets = load_gene_sets(name, config_gene_sets, dataset)
    except GeneSetError as err:
        entry = _entry(str(name), config_gene_sets) or {}
        if not (allow_empty and entry.get("source") in ("pathways", "programs")):
            raise
        log.warning("%s; writing an empty library", err)
        sets = {}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_gmt(sets, out)
    return len(sets)


def read_library(path: str | os.PathLike) -> dict[str, set[str]]:
    """A materialised GMT; an empty file is an empty library (a dataset without pathways)."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        return {}
    return parse_gmt(path)


def sources_table(gmts: Mapping[str, str | os.PathLike], config_gene_sets=None) -> pd.DataFrame:
    """One row per library used: where it came from, its version and licence, and its size.

    ``gmts``: {library name: its materialised GMT}. The report shows this table, so every
    result can be traced to a named, versioned and licensed source.
    """
    rows = []
    for name, path in gmts.items():
        entry = _entry(name, config_gene_sets) or {"source": "path", "path": str(path)}
        sets = read_library(path)
        where = {
            "package": f"{entry.get('package', 'blitzgsea')}:{entry.get('library', name)}",
            "url": " | ".join(entry.get("urls") or [entry.get("url", "")]),
            "path": entry.get("path", ""),
        }.get(entry.get("source"), "the prepared dataset")
        rows.append(
            {
                "library": name,
                "source": entry.get("source"),
                "location": where,
                "version": entry.get("version", ""),
                "licence": entry.get("licence", ""),
                "n_sets": len(sets),
                "n_genes": len(set().union(*sets.values())) if sets else 0,
            }
        )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# Run outputs
# --------------------------------------------------------------------------------------------


def _norm(gene: str) -> str:
    # Enrichr libraries spell symbols in upper case (C9ORF72), datasets often do not (C9orf72).
    return str(gene).strip().upper()


def _normalise_library(sets: Mapping[str, Iterable[str]]) -> dict[str, set[str]]:
    return {term: {_norm(g) for g in genes} for term, genes in sets.items()}


def perturbation_targets(adata) -> pd.Series:
    """Target genes (normalised symbols) of each row of a latents or predictions AnnData."""
    if "target_genes" in adata.obs:
        raw = adata.obs["target_genes"]
    else:
        raw = adata.obs["perturbation"] if "perturbation" in adata.obs else adata.obs_names
    # _label_targets also where target_genes is given: a Replogle guide-pair label stored there
    # still names its gene before the first '_'; a plain symbol passes unchanged.
    targets = [list(dict.fromkeys(_norm(g) for g in _label_targets(str(s)))) for s in raw]
    return pd.Series(targets, index=adata.obs_names.astype(str))


def read_summary(run_dir: str | os.PathLike) -> dict:
    """The run's identity: summary.json, with model/split/seed/family taken from the run
    directory's path (results/{experiment}/runs/{model}/{split}/seed{seed}) where it lacks them."""
    parts = Path(run_dir).resolve().parts
    seed = parts[-1][4:] if parts[-1].startswith("seed") else parts[-1]
    from_path = {
        "model": parts[-3],
        "split": parts[-2],
        "seed": int(seed) if seed.isdigit() else seed,
    }
    path = Path(run_dir) / "summary.json"
    summary = json.loads(path.read_text()) if path.is_file() else {}
    out = {**from_path, **{k: v for k, v in summary.items() if v not in (None, "")}}
    out.setdefault("family", out["model"])
    return out


def _run_keys(summary: Mapping) -> dict:
    return {k: summary.get(k) for k in ("model", "split", "seed")}


# --------------------------------------------------------------------------------------------
# Over-representation per latent dimension
# --------------------------------------------------------------------------------------------


def _bh(pvalues: np.ndarray) -> np.ndarray:
    from scipy.stats import false_discovery_control

    return false_discovery_control(pvalues, method="bh") if len(pvalues) else pvalues


def ora(query: Iterable[str], sets: Mapping[str, set[str]], background: Iterable[str]):
    """One over-representation test of ``query`` against every set, within ``background``.

    The hypergeometric p-values come from gseapy's offline ``enrich``. gseapy corrects only
    over the sets that overlap the query; here the BH family is every set offered (a set with
    no overlap has p = 1), which is the honest multiple-testing burden of the library.
    Returns term, overlap, set_size, pvalue, fdr, genes for the overlapping sets.
    """
    import gseapy

    background = sorted(set(background))
    query = sorted(set(query) & set(background))
    cols = ["term", "overlap", "set_size", "pvalue", "fdr", "genes"]
    qset = set(query)
    if not query or not any(qset & set(g) for g in sets.values()):
        # nothing can overlap; gseapy would log an error ("No hits") for this normal case
        return pd.DataFrame(columns=cols)
    enr = gseapy.enrich(
        gene_list=query,
        gene_sets={t: sorted(g) for t, g in sets.items()},
        background=background,
        outdir=None,
        no_plot=True,
        verbose=False,
    )
    res = getattr(enr, "res2d", None)
    if res is None or len(res) == 0:
        return pd.DataFrame(columns=cols)
    counts = res["Overlap"].str.split("/", expand=True).astype(int)
    out = pd.DataFrame(
        {
            "term": res["Term"].astype(str).to_numpy(),
            "overlap": counts[0].to_numpy(),
            "set_size": counts[1].to_numpy(),
            "pvalue": res["P-value"].astype(float).to_numpy(),
            "genes": res["Genes"].astype(str).to_numpy(),
        }
    )
    # BH over all offered sets: overlapping ones with their p, the rest at p = 1.
    p_all = np.concatenate([out["pvalue"].to_numpy(), np.ones(len(sets) - len(out))])
    out["fdr"] = _bh(p_all)[: len(out)]
    return out.sort_values(["pvalue", "term"], ignore_index=True)[cols]


def restrict_library(sets, background, min_set_size=MIN_SET_SIZE) -> dict[str, set[str]]:
    """Sets cut to the background; those with fewer than ``min_set_size`` genes left go."""
    background = set(background)
    out = {t: g & background for t, g in _normalise_library(sets).items()}
    return {t: g for t, g in out.items() if len(g) >= min_set_size}


def active_genes(mask_prob: pd.DataFrame, targets: pd.Series, threshold=DEFAULT_THRESHOLD):
    """{latent dim: target genes of the perturbations with mask probability > threshold}."""
    active = mask_prob.to_numpy() > threshold
    genes = targets.reindex(mask_prob.index).to_numpy()
    return {
        dim: sorted({g for i in np.flatnonzero(active[:, j]) for g in genes[i]})
        for j, dim in enumerate(mask_prob.columns)
    }


def enrich_masks(
    mask_prob: pd.DataFrame,
    targets: pd.Series,
    libraries: Mapping[str, Mapping[str, Iterable[str]]],
    threshold: float = DEFAULT_THRESHOLD,
    min_set_size: int = MIN_SET_SIZE,
) -> pd.DataFrame:
    """ORA of every latent dimension's active perturbations against every library.

    ``mask_prob``: perturbations × latent dims. ``targets``: perturbation → list of target
    genes. The background is all target genes of the model's perturbations.
    """
    background = sorted({g for gs in targets.reindex(mask_prob.index) for g in gs})
    per_dim = active_genes(mask_prob, targets, threshold)
    frames = []
    for lib, sets in libraries.items():
        usable = restrict_library(sets, background, min_set_size)
        if not usable:
            log.warning("library %s: no set has %d genes in the background", lib, min_set_size)
            continue
        for dim, query in per_dim.items():
            res = ora(query, usable, background)
            if len(res):
                res.insert(0, "latent_dim", dim)
                res.insert(0, "library", lib)
                res["query_size"] = len(query)
                res["background_size"] = len(background)
                frames.append(res)
    cols = [c for c in ENRICHMENT_COLUMNS if c not in ("model", "split", "seed")]
    if not frames:
        return pd.DataFrame(columns=cols)
    return pd.concat(frames, ignore_index=True)[cols]


def fraction_dims_enriched(table: pd.DataFrame, n_dims: int, alpha=0.05) -> float:
    """Share of latent dims with at least one term at FDR < alpha (the negative-control score)."""
    hit = table.loc[table["fdr"] < alpha, "latent_dim"].nunique() if len(table) else 0
    return hit / max(n_dims, 1)


def top_hits(table: pd.DataFrame) -> pd.DataFrame:
    """The best term (lowest p, then FDR) per run, library and latent dim."""
    keys = [c for c in ("model", "split", "seed", "library", "latent_dim") if c in table]
    ordered = table.sort_values(
        keys + ["pvalue", "fdr", "overlap"], ascending=[True] * len(keys) + [True, True, False]
    )
    return ordered.groupby(keys, sort=False, dropna=False).head(1).reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Complex recovery
# --------------------------------------------------------------------------------------------


def _jaccard(active: np.ndarray) -> np.ndarray:
    a = active.astype(float)
    inter = a @ a.T
    size = a.sum(1)
    union = size[:, None] + size[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)  # two empty masks share nothing


def _cosine(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    unit = np.divide(x, norm, out=np.zeros_like(x, dtype=float), where=norm > 0)
    return unit @ unit.T


def _pearson(x: np.ndarray) -> np.ndarray:
    centred = x - x.mean(axis=1, keepdims=True)
    return _cosine(centred)  # a constant (e.g. zero) effect correlates with nothing: 0


def similarity_matrix(values: np.ndarray, kind: str, threshold=DEFAULT_THRESHOLD) -> np.ndarray:
    """Pairwise similarity of the rows. The runs use the sign-free kinds: a perturbation
    that moves a program's dimension down is as much a member as one that moves it up, and
    signed cosine / Pearson rank such same-program pairs last (``embedding_cosine`` and
    ``effect_pearson`` are kept for comparison only)."""
    if kind == "embedding_abs_cosine":
        return np.abs(_cosine(np.asarray(values, dtype=float)))
    if kind == "effect_abs_pearson":
        return np.abs(_pearson(np.asarray(values, dtype=float)))
    if kind == "mask_jaccard":
        return _jaccard(np.asarray(values) > threshold)
    if kind == "embedding_cosine":
        return _cosine(np.asarray(values, dtype=float))
    if kind == "effect_pearson":
        return _pearson(np.asarray(values, dtype=float))
    raise ValueError(f"unknown similarity {kind!r}")


def shared_set_labels(genes: list[str], sets: Mapping[str, set[str]]) -> np.ndarray:
    """n × n boolean: do the targets of perturbations i and j share a gene set?"""
    terms = list(sets)
    member = np.zeros((len(genes), len(terms)), dtype=float)
    index = {g: i for i, g in enumerate(genes)}
    for j, t in enumerate(terms):
        for g in sets[t]:
            if g in index:
                member[index[g], j] = 1.0
    # genes can repeat (two guides of one gene): fill every row of a gene
    for i, g in enumerate(genes):
        member[i] = member[index[g]]
    return (member @ member.T) > 0


def recovery_scores(
    profiles: pd.DataFrame | np.ndarray,
    genes: list[str],
    sets: Mapping[str, Iterable[str]],
    kind: str,
    threshold: float = DEFAULT_THRESHOLD,
    annotated_only: bool = True,
) -> dict:
    """AUROC and average precision of pairwise similarity for "targets share a gene set".

    Pairs are single perturbations; a pair of perturbations of the same gene is skipped (that
    is guide agreement, not complex recovery). With ``annotated_only`` only perturbations whose
    target is in some set take part, as in the paper's pathway heatmaps: an unannotated gene
    is unknown, not a negative.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    values = np.asarray(profiles, dtype=float)
    genes = [_norm(g) for g in genes]
    sets = _normalise_library(sets)
    annotated = set().union(*sets.values()) if sets else set()
    keep = np.array([(g in annotated) or not annotated_only for g in genes], dtype=bool)
    values, genes = values[keep], [g for g, k in zip(genes, keep) if k]
    n = len(genes)
    result = {
        "auroc": np.nan,
        "average_precision": np.nan,
        "n_perturbations": n,
        "n_pairs": 0,
        "n_positive_pairs": 0,
    }
    if n < 2:
        return result
    sim = similarity_matrix(values, kind, threshold)
    label = shared_set_labels(genes, sets)
    iu, ju = np.triu_indices(n, k=1)
    g = np.asarray(genes)
    distinct = g[iu] != g[ju]
    y, s = label[iu, ju][distinct], sim[iu, ju][distinct]
    result.update(n_pairs=int(len(y)), n_positive_pairs=int(y.sum()))
    if 0 < y.sum() < len(y):
        result["auroc"] = float(roc_auc_score(y, s))
        result["average_precision"] = float(average_precision_score(y, s))
    return result


def run_profiles(latents=None, predictions=None) -> dict[str, tuple[pd.DataFrame, list[str]]]:
    """{similarity: (singles × features, target gene per row)} that a run supports.

    Masks (thresholded) give mask_jaccard; embeddings give embedding_abs_cosine, on the
    expected latent shift (mask probability × embedding mean) where the model has masks, since
    an embedding coordinate behind a closed mask does not act; predictions give
    effect_abs_pearson (predicted mean minus the control's), for every model including the
    baselines. All three are sign-free (see ``similarity_matrix``).
    """
    out: dict[str, tuple[pd.DataFrame, list[str]]] = {}
    if latents is not None and latents.n_obs:
        targets = perturbation_targets(latents)
        single = targets.map(len).eq(1).to_numpy()
        genes = [t[0] for t in targets[single]]
        names = latents.obs_names[single]
        layers = latents.layers
        mask = np.asarray(layers[MASK_LAYER]) if MASK_LAYER in layers else None
        if mask is not None:
            out["mask_jaccard"] = (pd.DataFrame(mask[single], index=names), genes)
        if EMBEDDING_LAYER in layers:
            emb = np.asarray(layers[EMBEDDING_LAYER], dtype=float)
            if mask is not None:
                emb = emb * mask
            out["embedding_abs_cosine"] = (pd.DataFrame(emb[single], index=names), genes)
    if predictions is not None and predictions.n_obs:
        labels = (
            predictions.obs["perturbation"].astype(str)
            if "perturbation" in predictions.obs
            else pd.Series(predictions.obs_names, index=predictions.obs_names)
        )
        control = str(predictions.uns.get("control_label", "non-targeting"))
        is_control = (labels == control).to_numpy()
        if is_control.sum() != 1:
            raise ValueError(f"predictions need exactly one control row {control!r}")
        X = (
            predictions.X.toarray()
            if hasattr(predictions.X, "toarray")
            else np.asarray(predictions.X)
        )
        effect = X - X[is_control]
        targets = perturbation_targets(predictions)
        single = (~is_control) & targets.map(len).eq(1).to_numpy()
        genes = [t[0] for t in targets[single]]
        out["effect_abs_pearson"] = (pd.DataFrame(effect[single], index=labels[single]), genes)
    return out


def complex_recovery(
    profiles, sets, threshold=DEFAULT_THRESHOLD, annotated_only=True
) -> pd.DataFrame:
    rows = []
    for kind, (values, genes) in profiles.items():
        score = recovery_scores(values, genes, sets, kind, threshold, annotated_only)
        rows.append({"similarity": kind, **score})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# Planted programs (simulation ground truth)
# --------------------------------------------------------------------------------------------


def planted_program_recovery(
    enrichment: pd.DataFrame,
    mask_prob: pd.DataFrame,
    programs: Mapping[str, Iterable[str]],
    library: str,
    threshold: float = DEFAULT_THRESHOLD,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """For each planted program, the learned dims that carry it and their top enrichment hit.

    Learned dims are not aligned with the true ones, so a program's dims are found from the
    masks: those whose active perturbations overlap the program's members with Jaccard >= 0.5
    (or, if none does, the single best one). The program counts as recovered when every such
    dim has the program's gene set as its top hit in ``library`` at FDR < alpha.
    """
    active = mask_prob.to_numpy() > threshold
    rows_index = {str(p): i for i, p in enumerate(mask_prob.index)}
    hits = top_hits(enrichment[enrichment["library"] == library]) if len(enrichment) else enrichment
    hits = hits.set_index("latent_dim") if len(hits) else hits
    out = []
    for program, members in programs.items():
        rows = [rows_index[str(m)] for m in members if str(m) in rows_index]
        if not rows:
            continue
        member = np.zeros(len(mask_prob), dtype=bool)
        member[rows] = True
        inter = (active & member[:, None]).sum(0)
        union = (active | member[:, None]).sum(0)
        jac = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
        dims = np.flatnonzero(jac >= 0.5)
        if len(dims) == 0:
            dims = np.array([int(np.argmax(jac))])
        sub = enrichment[(enrichment["library"] == library) & (enrichment["term"] == program)]
        for j in dims:
            dim = mask_prob.columns[j]
            top = hits.loc[dim] if len(hits) and dim in hits.index else None
            own = sub.loc[sub["latent_dim"] == dim, "fdr"]
            top_term = None if top is None else str(top["term"])
            top_fdr = np.nan if top is None else float(top["fdr"])
            out.append(
                {
                    "library": library,
                    "program": program,
                    "latent_dim": dim,
                    "jaccard": float(jac[j]),
                    "top_term": top_term,
                    "top_fdr": top_fdr,
                    "program_fdr": float(own.min()) if len(own) else np.nan,
                    "recovered": bool(top_term == program and top_fdr < alpha),
                }
            )
    cols = [c for c in PROGRAM_COLUMNS if c not in ("model", "split", "seed")]
    return pd.DataFrame(out, columns=cols)


# --------------------------------------------------------------------------------------------
# One run, end to end
# --------------------------------------------------------------------------------------------


def _read_h5ad(path: Path):
    import anndata as ad

    return ad.read_h5ad(path) if path.is_file() else None


def resolve_recovery_library(
    spec: str, libraries: Mapping[str, Mapping], dataset=None, config_gene_sets=None
):
    """The library that labels pairs: 'auto' = pathways, else planted programs, else KEGG."""
    if spec != "auto":
        name = library_name(spec, config_gene_sets)
        if name in libraries:  # already loaded for enrichment (by name or by the same file)
            return name, libraries[name]
        return name, load_gene_sets(spec, config_gene_sets, dataset)
    for name in ("pathways", "programs"):
        if libraries.get(name):
            return name, libraries[name]
        if dataset is not None:
            try:
                return name, load_gene_sets(name, config_gene_sets, dataset)
            except GeneSetError:
                pass
    name = "KEGG_2021_Human"
    return name, libraries.get(name) or load_gene_sets(name, config_gene_sets, dataset)


def enrich_run(
    run_dir: str | os.PathLike,
    libraries: Mapping[str, Mapping[str, Iterable[str]]],
    recovery: tuple[str, Mapping[str, Iterable[str]]],
    threshold: float = DEFAULT_THRESHOLD,
    min_set_size: int = MIN_SET_SIZE,
    programs: tuple[str, Mapping[str, Iterable[str]]] | None = None,
    identity: Mapping | None = None,
) -> dict[str, pd.DataFrame]:
    """Enrichment, complex recovery and (simulation) planted-program tables for one run.

    ``programs``: (library the planted sets came from, {set name: perturbation labels}).
    ``identity``: model/split/seed/family as the workflow knows them (default: summary.json,
    then the run directory's path).
    """
    run_dir = Path(run_dir)
    summary = {**read_summary(run_dir), **(identity or {})}
    keys = _run_keys(summary)
    latents = _read_h5ad(run_dir / "perturbation_latents.h5ad")
    predictions = _read_h5ad(run_dir / "predictions.h5ad")
    if latents is None and predictions is None:
        raise FileNotFoundError(
            f"{run_dir}: neither perturbation_latents.h5ad nor predictions.h5ad"
        )

    enrichment = pd.DataFrame(columns=ENRICHMENT_COLUMNS)
    planted = pd.DataFrame(columns=PROGRAM_COLUMNS)
    if latents is not None and MASK_LAYER in latents.layers:
        mask = pd.DataFrame(
            np.asarray(latents.layers[MASK_LAYER]),
            index=latents.obs_names.astype(str),
            columns=latents.var_names.astype(str),
        )
        targets = perturbation_targets(latents)
        table = enrich_masks(mask, targets, libraries, threshold, min_set_size)
        enrichment = table.assign(**keys)[ENRICHMENT_COLUMNS]
        if programs is not None:
            lib, sets = programs
            if lib not in libraries:
                log.warning("planted programs come from %s, which was not tested", lib)
            found = planted_program_recovery(table, mask, sets, lib, threshold)
            planted = found.assign(**keys)[PROGRAM_COLUMNS]
    else:
        log.info("%s: model %s has no mask probabilities; no enrichment", run_dir, keys["model"])

    lib_name, lib_sets = recovery
    rec = complex_recovery(run_profiles(latents, predictions), lib_sets, threshold)
    rec = rec.assign(library=lib_name, family=summary.get("family"), **keys)
    return {
        "enrichment": enrichment,
        "complex_recovery": rec.reindex(columns=RECOVERY_COLUMNS),
        "planted_programs": planted,
    }


def simulation_programs(dataset) -> tuple[str, dict] | None:
    """(program library, {program: perturbation labels}) of a simulated dataset, else None."""
    adata = _dataset(dataset)
    sim = None if adata is None else adata.uns.get("simulation")
    if not sim or "programs" not in sim:
        return None
    programs = {
        str(k): [str(v)] if isinstance(v, str) else [str(x) for x in np.asarray(v).ravel()]
        for k, v in dict(sim["programs"]).items()
    }
    return str(sim.get("program_library", "KEGG_2021_Human")), programs


def write_tsv(table: pd.DataFrame, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    os.replace(tmp, path)


def merge_tsvs(
    paths: Iterable[str | os.PathLike], out: str | os.PathLike, columns: list[str]
) -> pd.DataFrame:
    frames = [pd.read_csv(p, sep="\t") for p in paths if Path(p).stat().st_size > 0]
    frames = [f for f in frames if len(f)]
    merged = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    write_tsv(merged.reindex(columns=columns), out)
    return merged


# --------------------------------------------------------------------------------------------
# Workflow settings (read by workflow/rules/enrich.smk; here so the rule file holds only rules)
# --------------------------------------------------------------------------------------------

WORKFLOW_DEFAULTS = {
    # libraries tested per latent dimension (names in config gene_sets, or built-in)
    "gene_sets": ["KEGG_2021_Human", "GO_Biological_Process_2023", "pathways"],
    "threshold": DEFAULT_THRESHOLD,  # mask probability above which a perturbation is active
    "min_set_size": MIN_SET_SIZE,  # sets with fewer genes among the perturbed targets: skipped
    "recovery_library": "auto",  # labels pairs; auto: pathways, else programs, else KEGG
    "heatmap_library": "auto",  # groups the heatmap rows; same fallback
    "alpha": 0.05,  # FDR level drawn in the dot plot
    "models": None,  # models to analyse (None: all; a 1,125-run paper grid may name a few)
}
AUTO_LIBRARIES = ["pathways", "programs", "KEGG_2021_Human"]


def experiment_settings(config: Mapping, experiment: str) -> dict:
    """``experiments.<name>.enrichment`` over the defaults."""
    own = config["experiments"][experiment].get("enrichment") or {}
    return {**WORKFLOW_DEFAULTS, **own}


def library_candidates(config: Mapping, experiment: str, key: str) -> list[str]:
    """The libraries to try, in order, for ``recovery_library`` or ``heatmap_library``."""
    name = experiment_settings(config, experiment)[key]
    return list(AUTO_LIBRARIES) if name == "auto" else [name]


def libraries_used(config: Mapping, experiment: str) -> list[str]:
    """Every library an experiment reads: tested, labelling pairs, grouping the heatmap."""
    names = list(experiment_settings(config, experiment)["gene_sets"])
    names += library_candidates(config, experiment, "recovery_library")
    names += library_candidates(config, experiment, "heatmap_library")
    return list(dict.fromkeys(names))


def selected_runs(config: Mapping, experiment: str, runs: Iterable[Mapping]) -> list[Mapping]:
    """The runs an experiment's enrichment covers (``enrichment.models``, default all)."""
    models = experiment_settings(config, experiment).get("models")
    return [r for r in runs if models is None or r["model"] in models]


def first_run_per_model(runs: Iterable[Mapping]) -> list[Mapping]:
    """The first split and seed of each model (one heatmap panel / dot-plot facet per model)."""
    first: dict[str, Mapping] = {}
    for run in runs:
        first.setdefault(run["model"], run)
    return list(first.values())


def workflow_targets(config: Mapping, experiment: str, results: str = "results") -> list[str]:
    """Every enrichment output of an experiment, for the Snakefile's ``all``."""
    out = f"{results}/{experiment}"
    figures = f"{out}/figures/enrichment"
    libraries = experiment_settings(config, experiment)["gene_sets"]
    return [
        f"{out}/gene_set_sources.tsv",
        f"{out}/enrichment.tsv",
        f"{out}/complex_recovery.tsv",
        f"{out}/planted_programs.tsv",
        f"{figures}/mask_heatmaps.png",
        f"{figures}/complex_recovery.png",
    ] + [f"{figures}/top_terms_{library}.png" for library in libraries]


# --------------------------------------------------------------------------------------------
# Command line: samsbench enrich
# --------------------------------------------------------------------------------------------


def _config_gene_sets(path: str | None) -> Mapping | None:
    if path is None:
        path = "config.yaml" if Path("config.yaml").is_file() else None
    if path is None:
        return None
    import yaml

    with open(path) as fh:
        cfg = yaml.safe_load(fh) or {}
    return cfg.get("gene_sets") or None


def add_enrich_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "enrich",
        help="test learned masks for gene-set enrichment and score complex recovery of a run",
        description="Over-representation of each latent dimension's active perturbations "
        "(mask probability > threshold) against gene-set libraries, and complex recovery "
        "(AUROC of pairwise similarity for 'targets share a gene set') for one trained run.",
    )
    p.add_argument("--run", required=True, help="run directory (holds perturbation_latents.h5ad)")
    p.add_argument(
        "--gene-sets",
        nargs="+",
        default=["GO_Biological_Process_2023", "KEGG_2021_Human"],
        metavar="NAME|PATH",
        help="library names from config gene_sets, or GMT files",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help="mask probability above which a perturbation is active (default 0.5)",
    )
    p.add_argument(
        "--min-set-size",
        type=int,
        default=MIN_SET_SIZE,
        help="skip sets with fewer genes in the background (default 3)",
    )
    p.add_argument(
        "--recovery-library",
        default="auto",
        metavar="NAME|PATH",
        help="library labelling pairs for complex recovery; 'auto' = the dataset's "
        "pathways, else its planted programs, else KEGG_2021_Human",
    )
    p.add_argument("--dataset", help="prepared h5ad (for the 'pathways'/'programs' sources)")
    p.add_argument("--config", help="config.yaml with a gene_sets: block (default ./config.yaml)")
    p.add_argument("--out", help="output directory (default: the run directory)")
    p.set_defaults(func=run_enrich)
    return p


def run_enrich(args) -> int:
    config_sets = _config_gene_sets(getattr(args, "config", None))
    dataset = _dataset(args.dataset) if getattr(args, "dataset", None) else None
    libraries = {}
    for spec in args.gene_sets:
        name = library_name(spec, config_sets)
        libraries[name] = load_gene_sets(spec, config_sets, dataset)
        log.info("library %s: %d sets", name, len(libraries[name]))
    recovery = resolve_recovery_library(args.recovery_library, libraries, dataset, config_sets)
    programs = simulation_programs(dataset) if dataset is not None else None
    tables = enrich_run(args.run, libraries, recovery, args.threshold, args.min_set_size, programs)
    out = Path(args.out or args.run)
    for key, table in tables.items():
        write_tsv(table, out / f"{key}.tsv")
    enr = tables["enrichment"]
    n_sig = (enr["fdr"] < 0.05).sum() if len(enr) else 0
    print(f"{out}: {len(enr)} enrichment rows ({n_sig} at FDR < 0.05); complex recovery:")
    print(
        tables["complex_recovery"][["similarity", "auroc", "average_precision"]].to_string(
            index=False
        )
    )
    return 0


def main(argv=None) -> int:
    """``python -m samsbench.enrich`` without the package CLI (same arguments as ``enrich``)."""
    parser = argparse.ArgumentParser(prog="samsbench")
    add_enrich_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["enrich", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
