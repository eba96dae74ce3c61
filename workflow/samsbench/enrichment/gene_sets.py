"""Gene-set libraries as data: GMT and CORUM parsers, the dataset's own annotation as sets,
and the mapping of perturbation labels to (normalised) target gene symbols.

Everything works on text and in-memory objects; the enrich stage (samsbench.stages.enrich)
finds, downloads and reads the files, and holds the registry of gene-set sources.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

COMBINATION_SEP = "+"


class GeneSetError(ValueError):
    """A gene-set library cannot be found or read."""


def parse_gmt(text: str, where: str = "GMT") -> dict[str, set[str]]:
    """Parse GMT text: one set per line, ``name<TAB>description<TAB>gene<TAB>gene...``.

    Enrichr leaves the description blank and ends lines with a tab; both are fine. Duplicate
    genes collapse, a set named twice is merged, and sets left empty are dropped (each with a
    log note). A line without a tab, or with an empty name, is an error naming ``where`` and the line.
    """
    sets: dict[str, set[str]] = {}
    n_dup_genes = 0
    empty: list[str] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue  # blank lines carry nothing; GMT has no other kind of non-set line
        fields = line.split("\t")
        if len(fields) < 2:
            raise GeneSetError(
                f"{where}:{lineno}: malformed GMT line (expected tab-separated name, "
                f"description, genes; found no tab): {line[:80]!r}"
            )
        name = fields[0].strip()
        if not name:
            raise GeneSetError(f"{where}:{lineno}: malformed GMT line (empty gene-set name)")
        genes = [g.strip() for g in fields[2:]]
        genes = [g for g in genes if g]
        n_dup_genes += len(genes) - len(set(genes))
        if name in sets:
            log.info("%s:%d: gene set %r appears again; merged", where, lineno, name)
        sets.setdefault(name, set()).update(genes)
    for name in [n for n, g in sets.items() if not g]:
        empty.append(name)
        del sets[name]
    if n_dup_genes:
        log.info("%s: %d duplicate gene entries collapsed", where, n_dup_genes)
    if empty:
        log.warning("%s: dropped %d empty gene set(s): %s", where, len(empty), ", ".join(empty[:5]))
    if not sets:
        raise GeneSetError(f"{where}: no non-empty gene sets found; is this a GMT file?")
    return sets


def parse_corum(text: str, where: str = "CORUM table", organism: str = "Human") -> dict[str, set[str]]:
    """Parse CORUM's own complex table (tab-separated, one complex per row, subunits by ';')."""
    try:
        table = pd.read_csv(io.StringIO(text), sep="\t", dtype=str)
    except pd.errors.ParserError as err:
        raise GeneSetError(f"{where}: not a CORUM table ({err})") from None
    name_col = next((c for c in ("ComplexName", "complex_name") if c in table), None)
    gene_col = next((c for c in ("subunits(Gene name)", "subunits_gene_name") if c in table), None)
    if name_col is None or gene_col is None:
        raise GeneSetError(
            f"{where}: a CORUM table needs a complex-name column and a subunit gene-name column; "
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
        raise GeneSetError(f"{where}: no complexes with gene names for organism {organism!r}")
    return sets


def format_gmt(gene_sets: Mapping[str, Iterable[str]]) -> str:
    """Sets as GMT text with a blank description (Enrichr style), sorted for stable diffs."""
    lines = []
    for name in sorted(gene_sets):
        if "\t" in name or "\n" in name:
            raise GeneSetError(f"gene-set name {name!r} contains a tab or newline")
        lines.append("\t".join([name, "", *sorted(gene_sets[name])]) + "\n")
    return "".join(lines)


def library_name(name_or_path: str, known: Iterable[str] = ()) -> str:
    """The library's name in outputs: a ``known`` library name as it is, else a file's stem."""
    if str(name_or_path) in set(known):
        return str(name_or_path)
    name = Path(name_or_path).name
    for suffix in (".zip", ".gmt", ".txt"):
        name = name[: -len(suffix)] if name.lower().endswith(suffix) else name
    return name


def normalise(gene: str) -> str:
    # Enrichr libraries spell symbols in upper case (C9ORF72), datasets often do not (C9orf72).
    return str(gene).strip().upper()


def normalise_library(sets: Mapping[str, Iterable[str]]) -> dict[str, set[str]]:
    return {term: {normalise(g) for g in genes} for term, genes in sets.items()}


def label_targets(label: str) -> list[str]:
    """Target genes of a perturbation label when no explicit mapping is stored.

    Combinations join components with '+'; a Replogle guide pair (``GENE_-_123.23-P1P2|...``)
    names its gene before the first '_' (as in the reference's demo notebook).
    """
    return [part.split("_")[0] for part in str(label).split(COMBINATION_SEP) if part]


def perturbation_targets(adata) -> pd.Series:
    """Target genes (normalised symbols) of each row of a latents or predictions AnnData."""
    if "target_genes" in adata.obs:
        raw = adata.obs["target_genes"]
    else:
        raw = adata.obs["perturbation"] if "perturbation" in adata.obs else adata.obs_names
    # label_targets also where target_genes is given: a Replogle guide-pair label stored there
    # still names its gene before the first '_'; a plain symbol passes unchanged.
    targets = [list(dict.fromkeys(normalise(g) for g in label_targets(str(s)))) for s in raw]
    return pd.Series(targets, index=adata.obs_names.astype(str))


def sets_from_annotation(adata, kind: str) -> dict[str, set[str]]:
    """Sets of target genes from the dataset's own annotation: ``uns["pathways"]`` (kind
    'pathways') or the simulation's planted programs (kind 'programs')."""
    if adata is None:
        raise GeneSetError(f"the gene-set source {kind!r} needs the dataset")
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
        genes = {g for lab in labels for g in label_targets(str(lab))}
        if genes:
            out[str(name)] = genes
    return out


def simulation_programs(adata) -> tuple[str, dict] | None:
    """(program library, {program: perturbation labels}) of a simulated dataset, else None."""
    sim = None if adata is None else adata.uns.get("simulation")
    if not sim or "programs" not in sim:
        return None
    programs = {
        str(k): [str(v)] if isinstance(v, str) else [str(x) for x in np.asarray(v).ravel()]
        for k, v in dict(sim["programs"]).items()
    }
    return str(sim.get("program_library", "KEGG_2021_Human")), programs
