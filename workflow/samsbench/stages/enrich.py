"""The enrich step: materialise gene-set libraries, one run's enrichment and recovery tables,
merge an experiment's tables, and the sources table. The science is in samsbench.enrichment.

Settings come from one resolver, ``settings(config, experiment, **overrides)``: the
experiment's ``enrichment:`` block (defaults filled by the schema), then any override the
command line gives. The workflow and ``samsbench enrich`` both call ``run_tables``.

Gene-set sources form one registry, ``SOURCES``: a source kind names how to get a library's
sets (an installed package's GMT, a download, a local file, the dataset's own annotation).
Adding a source kind is one entry there (docs/architecture.md); adding a library of an
existing kind is one ``gene_sets:`` entry in config.yaml. (About 430 lines: a quarter is the
table of built-in libraries with their versions and licences.)
"""

from __future__ import annotations

import io
import logging
import os
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from samsbench import io as sbio
from samsbench.enrichment import gene_sets as gs
from samsbench.enrichment import ora, recovery
from samsbench.enrichment.gene_sets import GeneSetError

log = logging.getLogger(__name__)

DEFAULT_CHECKSUMS = "data/checksums.tsv"
RUN_KEYS = ["model", "split", "seed"]
ENRICHMENT_COLUMNS = RUN_KEYS + ora.COLUMNS
RECOVERY_COLUMNS = RUN_KEYS + recovery.RECOVERY_COLUMNS + ["family"]
PROGRAM_COLUMNS = RUN_KEYS + recovery.PROGRAM_COLUMNS
TABLES = {"enrichment": ENRICHMENT_COLUMNS, "complex_recovery": RECOVERY_COLUMNS,
          "planted_programs": PROGRAM_COLUMNS}
# 'auto' for recovery_library / heatmap_library: the first of these that is not empty.
AUTO_LIBRARIES = ["pathways", "programs", "KEGG_2021_Human"]

# The built-in libraries (config.yaml's `gene_sets:` entries override and extend them).
_ENRICHR = "https://maayanlab.cloud/Enrichr/geneSetLibrary?mode=text&libraryName="
DEFAULT_GENE_SETS: dict[str, dict] = {
    "GO_Biological_Process_2023": {
        "source": "package", "package": "blitzgsea", "library": "GO_Biological_Process_2023",
        "version": "Enrichr GO_Biological_Process_2023, as shipped in the blitzgsea package",
        "licence": "Gene Ontology: CC BY 4.0",
    },
    "KEGG_2021_Human": {
        "source": "package", "package": "blitzgsea", "library": "KEGG_2021_Human",
        "version": "Enrichr KEGG_2021_Human, as shipped in the blitzgsea package",
        "licence": "KEGG: academic use only (kegg.jp/kegg/legal.html); never committed",
    },
    "pathways": {"source": "pathways", "version": "the dataset's uns['pathways']",
                 "licence": "as the dataset"},
    "programs": {"source": "programs",
                 "version": "the simulation's planted programs, uns['simulation']['programs']",
                 "licence": "generated"},
    "CORUM": {
        "source": "url", "urls": [_ENRICHR + "CORUM"], "sha256": None,
        "path": "data/gene_sets/CORUM.gmt",
        "version": "CORUM human complexes as served by Enrichr (checksum recorded on first download)",
        "licence": "CORUM: free for academic, non-commercial use; never committed",
    },
    "Reactome_Pathways": {
        "source": "url", "urls": ["https://reactome.org/download/current/ReactomePathways.gmt.zip"],
        "sha256": None, "path": "data/downloads/ReactomePathways.gmt.zip",
        "version": "Reactome 'current' release (checksum recorded on first download)",
        "licence": "Reactome: CC BY 4.0",
    },
    "MSigDB_GO_BP": {
        "source": "url",
        "urls": ["https://data.broadinstitute.org/gsea-msigdb/msigdb/release/2023.2.Hs/"
                 "c5.go.bp.v2023.2.Hs.symbols.gmt"],
        "sha256": None, "path": "data/gene_sets/MSigDB_GO_BP.gmt",
        "version": "MSigDB 2023.2.Hs C5 GO:BP, gene symbols",
        "licence": "MSigDB C5 (Gene Ontology): CC BY 4.0",
    },
    "Enrichr_GO_BP_2023": {
        "source": "url", "urls": [_ENRICHR + "GO_Biological_Process_2023"], "sha256": None,
        "path": "data/gene_sets/Enrichr_GO_BP_2023.gmt",
        "version": "Enrichr GO_Biological_Process_2023 (checksum recorded on first download)",
        "licence": "Gene Ontology: CC BY 4.0",
    },
}


# ------------------------------------------------------------------------------ settings


def settings(config: Mapping, experiment: str, **overrides) -> dict:
    """The experiment's enrichment settings (schema defaults filled by config validation),
    with every override that is not None on top."""
    if experiment not in config["experiments"]:
        raise ValueError(f"unknown experiment {experiment!r}; known: {sorted(config['experiments'])}")
    block = dict(config["experiments"][experiment].get("enrichment") or {})
    missing = {"gene_sets", "threshold", "min_set_size", "recovery_library",
               "heatmap_library", "alpha", "models"} - set(block)
    if missing:
        raise ValueError(f"experiment {experiment}: enrichment settings lack {sorted(missing)}; "
                         "validate the config first (samsbench.config.validate)")
    block.update({k: v for k, v in overrides.items() if v is not None})
    return block


def library_candidates(settings: Mapping, key: str) -> list[str]:
    """The libraries to try, in order, for ``recovery_library`` or ``heatmap_library``."""
    name = settings[key]
    return list(AUTO_LIBRARIES) if name == "auto" else [name]


def run_libraries(settings: Mapping) -> list[str]:
    """The libraries one run's tables read: those tested and the recovery candidates."""
    return list(dict.fromkeys(list(settings["gene_sets"])
                              + library_candidates(settings, "recovery_library")))


def libraries_used(settings: Mapping) -> list[str]:
    """Every library an experiment reads: tested, labelling pairs, grouping the heatmap."""
    return list(dict.fromkeys(run_libraries(settings)
                              + library_candidates(settings, "heatmap_library")))


def first_nonempty(candidates: Iterable[str], libraries: Mapping[str, Mapping]):
    """(name, sets) of the first candidate with sets; an error naming them when none has."""
    candidates = list(candidates)
    for name in candidates:
        if libraries.get(name):
            return name, libraries[name]
    raise GeneSetError(f"no non-empty library among {candidates}")


# ------------------------------------------------------------------------------ sources


def _read_text(path: Path) -> str:
    """The text of a gene-set file, reading the single file inside a zip (Reactome ships one)."""
    if not path.is_file():
        raise GeneSetError(f"gene-set file not found: {path}")
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


def read_gene_set_file(path: str | os.PathLike, fmt: str = "gmt") -> dict[str, set[str]]:
    """A GMT file (or CORUM's complex table with ``fmt='corum'``) as {term: genes}."""
    path = Path(path)
    text = _read_text(path)
    return gs.parse_corum(text, str(path)) if fmt == "corum" else gs.parse_gmt(text, str(path))


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


def _from_package(name, entry, _dataset, _checksums):
    path = package_gmt_path(entry.get("package", "blitzgsea"), entry.get("library", name))
    return read_gene_set_file(path, entry.get("format", "gmt"))


def _from_path(name, entry, _dataset, _checksums):
    if "path" not in entry:
        raise GeneSetError(f"gene-set source {name!r}: a 'path' source needs path:")
    return read_gene_set_file(entry["path"], entry.get("format", "gmt"))


def _from_url(name, entry, _dataset, checksums_tsv):
    urls = entry.get("urls") or ([entry["url"]] if entry.get("url") else [])
    if not urls:
        raise GeneSetError(f"gene-set source {name!r}: a 'url' source needs urls:")
    out = Path(entry.get("path") or f"data/gene_sets/{name}.gmt")
    from samsbench.data.download import download, read_checksums  # network code: url only

    known = entry.get("sha256") or read_checksums(checksums_tsv).get(out.name, {}).get("sha256")
    if out.is_file() and not known:
        # download() would delete an unverifiable file and fetch it again on every call
        log.info("%s: using %s as present (no checksum known to verify it)", name, out)
    else:
        download(urls, out, sha256=entry.get("sha256"), checksums_tsv=checksums_tsv)
    return read_gene_set_file(out, entry.get("format", "gmt"))


def _from_dataset(kind):
    def load(_name, _entry, dataset, _checksums):
        return gs.sets_from_annotation(_dataset(dataset), kind)

    return load


@dataclass(frozen=True)
class Source:
    """A kind of gene-set source: ``load(name, entry, dataset, checksums_tsv) -> sets`` and
    ``location(name, entry)`` for the sources table. ``from_dataset``: the sets come from the
    prepared dataset, which may lack them (the library is then empty, not an error)."""

    load: Callable
    location: Callable[[str, Mapping], str]
    from_dataset: bool = False


SOURCES: dict[str, Source] = {
    "package": Source(_from_package, lambda name, e: f"{e.get('package', 'blitzgsea')}:"
                                                      f"{e.get('library', name)}"),
    "url": Source(_from_url, lambda _, e: " | ".join(e.get("urls") or [e.get("url", "")])),
    "path": Source(_from_path, lambda _, e: e.get("path", "")),
    "pathways": Source(_from_dataset("pathways"), lambda *_: "the prepared dataset", True),
    "programs": Source(_from_dataset("programs"), lambda *_: "the prepared dataset", True),
}


def gene_set_table(config_gene_sets: Mapping | None) -> dict[str, dict]:
    """The built-in sources, overridden and extended by config's ``gene_sets:`` entries."""
    return {**DEFAULT_GENE_SETS, **{k: dict(v) for k, v in (config_gene_sets or {}).items()}}


def check_library_files(config: Mapping, experiments: Iterable[str]) -> None:
    """Every local GMT (a ``source: path`` library) that one of ``experiments`` tests exists:
    found at the dry run, not after every model trained."""
    table = gene_set_table(config.get("gene_sets"))
    for experiment in experiments:
        for name in libraries_used(settings(config, experiment)):
            entry = table.get(name) or {}
            if entry.get("source") != "path":
                continue
            if not entry.get("path"):
                raise ValueError(f"config.yaml: gene_sets/{name}: a `source: path` library "
                                 "needs `path:` naming its GMT file")
            if not os.path.isfile(entry["path"]):
                raise ValueError(f"config.yaml: gene_sets/{name}/path: file not found: "
                                 f"{entry['path']} (experiment {experiment} tests it); fix "
                                 "the path or drop the library from enrichment.gene_sets")


def _dataset(dataset):
    """An AnnData from a path or an AnnData (read backed: only ``uns`` is needed)."""
    if dataset is None or not isinstance(dataset, (str, os.PathLike)):
        return dataset
    import anndata as ad

    return ad.read_h5ad(dataset, backed="r")


def load_gene_sets(name_or_path: str, config_gene_sets: Mapping | None = None, dataset=None,
                   *, checksums_tsv: str | None = DEFAULT_CHECKSUMS) -> dict[str, set[str]]:
    """Gene sets {term: genes} of a library named in config (or built in), or of a file path.
    ``dataset`` (AnnData or h5ad path) serves the dataset-derived sources."""
    table = gene_set_table(config_gene_sets)
    entry = table.get(str(name_or_path))
    if entry is None:
        path = Path(name_or_path)
        if path.is_file():
            corum = path.suffix.lower() in (".txt", ".tsv") and "corum" in path.name.lower()
            return read_gene_set_file(path, "corum" if corum else "gmt")
        raise GeneSetError(
            f"unknown gene-set library {str(name_or_path)!r}: not a name in the gene_sets "
            f"config (known: {', '.join(sorted(table))}) and not an existing GMT file"
        )
    source = SOURCES.get(entry.get("source"))
    if source is None:
        raise GeneSetError(f"gene-set source {name_or_path!r} has unknown source "
                           f"{entry.get('source')!r} (expected one of {', '.join(SOURCES)})")
    return source.load(str(name_or_path), entry, dataset, checksums_tsv)


def library(name: str, config_gene_sets: Mapping | None, dataset) -> dict[str, set[str]]:
    """One library as the workflow stores it (normalised through GMT text); a dataset-derived
    library the dataset lacks is empty, so a default list can name 'pathways' everywhere."""
    try:
        sets = load_gene_sets(name, config_gene_sets, dataset)
    except GeneSetError as err:
        entry = gene_set_table(config_gene_sets).get(str(name)) or {}
        if not getattr(SOURCES.get(entry.get("source")), "from_dataset", False):
            raise
        log.warning("%s; the library is empty", err)
        return {}
    return gs.parse_gmt(gs.format_gmt(sets), name) if sets else {}


def materialise(name: str, config_gene_sets: Mapping | None, dataset, out) -> int:
    """Write one library as a normalised GMT (the workflow's per-experiment copy)."""
    sets = library(name, config_gene_sets, dataset)
    sbio.write_text(gs.format_gmt(sets), out)
    return len(sets)


def read_library(path: str | os.PathLike) -> dict[str, set[str]]:
    """A materialised GMT; an empty file is an empty library (a dataset without pathways)."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        return {}
    return read_gene_set_file(path)


def read_libraries(gmts: Iterable[str | os.PathLike]) -> dict[str, dict[str, set[str]]]:
    """{library name: sets} of materialised GMTs named ``<library>.gmt``."""
    return {Path(p).name[: -len(".gmt")]: read_library(p) for p in gmts}


def sources(gmts: Iterable[str | os.PathLike], config_gene_sets, out) -> pd.DataFrame:
    """One row per library used: where it came from, its version and licence, and its size.
    The report shows this table, so every result traces to a named, versioned source."""
    rows = []
    for name, sets in read_libraries(gmts).items():
        entry = gene_set_table(config_gene_sets).get(name) or {"source": "path"}
        source = SOURCES.get(entry.get("source"))
        rows.append({
            "library": name, "source": entry.get("source"),
            "location": source.location(name, entry) if source else "",
            "version": entry.get("version", ""), "licence": entry.get("licence", ""),
            "n_sets": len(sets), "n_genes": len(set().union(*sets.values())) if sets else 0,
        })
    table = pd.DataFrame(rows)
    sbio.write_tsv(table, out)
    return table


# ------------------------------------------------------------------------------ one run


def _read_h5ad(path: Path):
    import anndata as ad

    return ad.read_h5ad(path) if path.is_file() else None


def read_identity(run_dir: str | os.PathLike) -> dict:
    """model/split/seed/family of a run from its summary.json (written by the train step)."""
    path = sbio.run_file(run_dir, "summary")
    summary = sbio.read_summary(run_dir)
    if summary is None:
        raise FileNotFoundError(f"{path}: no summary.json; is {run_dir} a trained run directory?")
    missing = [k for k in ("model", "split", "seed", "family") if summary.get(k) in (None, "")]
    if missing:
        raise ValueError(f"{path} does not record the run's {', '.join(missing)}")
    return {k: summary[k] for k in ("model", "split", "seed", "family")}


def run_tables(run_dir: str | os.PathLike, libraries: Mapping[str, Mapping], settings: Mapping,
               dataset, identity: Mapping) -> dict[str, pd.DataFrame]:
    """Enrichment, complex recovery and (simulation) planted-program tables of one run.

    ``libraries``: {name: sets} holding at least ``run_libraries(settings)`` (empty sets for a
    dataset-derived library the dataset lacks). ``identity``: model, split, seed, family.
    """
    run_dir = Path(run_dir)
    keys = {k: identity[k] for k in RUN_KEYS}
    tested = {}
    for name in settings["gene_sets"]:
        if libraries[name]:
            tested[name] = libraries[name]
        else:  # e.g. 'pathways' for a dataset without uns["pathways"]
            log.warning("library %s is empty for this dataset; skipped", name)
    lib_name, lib_sets = first_nonempty(library_candidates(settings, "recovery_library"),
                                        libraries)
    log.info("complex recovery labels pairs with %s", lib_name)
    latents = _read_h5ad(Path(sbio.run_file(run_dir, "latents")))
    predictions = _read_h5ad(Path(sbio.run_file(run_dir, "predictions")))
    if latents is None and predictions is None:
        raise FileNotFoundError(f"{run_dir}: neither perturbation_latents.h5ad nor predictions.h5ad")
    threshold = settings["threshold"]

    enrichment = pd.DataFrame(columns=ENRICHMENT_COLUMNS)
    planted = pd.DataFrame(columns=PROGRAM_COLUMNS)
    if latents is not None and recovery.MASK_LAYER in latents.layers:
        mask = pd.DataFrame(np.asarray(latents.layers[recovery.MASK_LAYER]),
                            index=latents.obs_names.astype(str),
                            columns=latents.var_names.astype(str))
        table = ora.enrich_masks(mask, gs.perturbation_targets(latents), tested, threshold,
                                 settings["min_set_size"])
        enrichment = table.assign(**keys)[ENRICHMENT_COLUMNS]
        programs = gs.simulation_programs(_dataset(dataset))
        if programs is not None:
            lib, sets = programs
            if lib not in tested:
                log.warning("planted programs come from %s, which was not tested", lib)
            found = recovery.planted_program_recovery(table, mask, sets, lib, threshold)
            planted = found.assign(**keys)[PROGRAM_COLUMNS]
    else:
        log.info("%s: model %s has no mask probabilities; no enrichment", run_dir, keys["model"])

    rec = recovery.complex_recovery(recovery.run_profiles(latents, predictions), lib_sets,
                                    threshold)
    rec = rec.assign(library=lib_name, family=identity["family"], **keys)
    return {"enrichment": enrichment,
            "complex_recovery": rec.reindex(columns=RECOVERY_COLUMNS),
            "planted_programs": planted}


def run(run_dir, gmts: Iterable[str], settings: Mapping, dataset, identity: Mapping,
        outputs: Mapping[str, str]) -> dict[str, pd.DataFrame]:
    """The workflow's step: one run's tables from the experiment's materialised libraries."""
    tables = run_tables(run_dir, read_libraries(gmts), settings, dataset, identity)
    write_tables(tables, outputs)
    return tables


def run_from_config(config: Mapping, experiment: str, run_dir, dataset, out_dir=None,
                    **overrides) -> dict[str, pd.DataFrame]:
    """The command line's step: the same tables, with libraries loaded from the config's
    sources as the workflow materialises them, settings from ``settings()``."""
    chosen = settings(config, experiment, **overrides)
    dataset = _dataset(dataset)
    known = gene_set_table(config.get("gene_sets"))
    # a GMT file given by path is named by its stem in the tables
    named = {spec: gs.library_name(spec, known) for spec in run_libraries(chosen)}
    libraries = {named[spec]: library(spec, config.get("gene_sets"), dataset) for spec in named}
    chosen["gene_sets"] = [named[spec] for spec in chosen["gene_sets"]]
    if chosen["recovery_library"] != "auto":
        chosen["recovery_library"] = named[chosen["recovery_library"]]
    tables = run_tables(run_dir, libraries, chosen, dataset, read_identity(run_dir))
    out_dir = Path(out_dir or run_dir)
    write_tables(tables, {key: out_dir / sbio.RUN_FILES[key] for key in TABLES})
    return tables


def write_tables(tables: Mapping[str, pd.DataFrame], outputs: Mapping[str, str]) -> None:
    for key, table in tables.items():
        sbio.write_tsv(table, outputs[key])
        log.info("%s: %d rows -> %s", key, len(table), outputs[key])


def program_rate(planted_tsv, out_tsv, out_png) -> pd.DataFrame:
    """Planted-program recovery as a rate over seeds (recovery.program_recovery_rate) from
    an experiment's merged planted_programs.tsv, as a table and a figure."""
    from samsbench.plots import enrichment as figures

    path = Path(planted_tsv)
    planted = pd.read_csv(path, sep="\t") if path.stat().st_size > 0 else pd.DataFrame()
    rates = recovery.program_recovery_rate(planted)
    sbio.write_tsv(rates, out_tsv)
    sbio.write_png(figures.program_rate_plot(rates), out_png)
    return rates


def merge(inputs: Mapping[str, Iterable[str]], outputs: Mapping[str, str]) -> None:
    """Concatenate the per-run tables of an experiment, table by table."""
    _write_merged({key: [pd.read_csv(p, sep="\t") for p in inputs[key]
                         if Path(p).stat().st_size > 0] for key in TABLES}, outputs)


def run_experiment(run_dirs: Iterable[str], identities: Iterable[Mapping], gmts: Iterable[str],
                   settings: Mapping, dataset, outputs: Mapping[str, str]) -> None:
    """The workflow's step for a whole experiment: every run's tables (``run_tables``) in one
    process, the libraries and the dataset read once, written as ``merge`` writes the per-run
    files' tables. One job instead of one per run: each job costs seconds of imports."""
    libraries, dataset = read_libraries(gmts), _dataset(dataset)
    per_run = [run_tables(d, libraries, settings, dataset, identity)
               for d, identity in zip(run_dirs, identities)]
    _write_merged({key: [tables[key] for tables in per_run] for key in TABLES}, outputs)


def _write_merged(frames: Mapping[str, list[pd.DataFrame]], outputs: Mapping[str, str]) -> None:
    for key, columns in TABLES.items():
        found = [f for f in frames[key] if len(f)]
        merged = pd.concat(found, ignore_index=True) if found else pd.DataFrame(columns=columns)
        sbio.write_tsv(merged.reindex(columns=columns), outputs[key])
        log.info("%s: %d rows from %d runs", key, len(merged), len(frames[key]))
