"""The mask-stability step: reads runs' q(mask) and the merged enrichment table, writes the
pair table, the seed support of enrichment terms and the figure (science in mask_stability)."""

from __future__ import annotations

import logging
import os

import anndata as ad
import pandas as pd

from samsbench import mask_stability as ms

log = logging.getLogger(__name__)


def masked_groups(runs: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """Runs grouped by (model, split), only groups with at least two seeds."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        groups.setdefault((run["model"], run["split"]), []).append(run)
    return {k: v for k, v in groups.items() if len({r["seed"] for r in v}) >= 2}


def stability_runs(runs: list[dict]) -> list[dict]:
    """The runs the mask_stability rule reads: those of (model, split) with two or more seeds."""
    return [run for group in masked_groups(runs).values() for run in group]


def workflow_targets(runs: list[dict], results: str, experiment: str) -> list[str]:
    """The rule's outputs for the Snakefile's ``all`` (none without a model of two seeds)."""
    if not stability_runs(runs):
        return []
    out = f"{results}/{experiment}"
    return [f"{out}/mask_stability.tsv", f"{out}/enrichment_seed_support.tsv",
            f"{out}/figures/mask_stability.png"]


def trained_perturbations(data_path: str, split_paths: dict[str, str]) -> dict[str, set[str]]:
    """Per split: the perturbation columns with training cells (labels and their components).

    A held-out perturbation's q(mask) never moves from its initial value in any seed; left in,
    those identical rows would count as agreement."""
    from samsbench.data import contract, splits

    data = contract.read(data_path)
    labels = data.obs[contract.PERTURBATION_KEY].astype(str).to_numpy()
    out = {}
    for split, path in split_paths.items():
        train = set(labels[splits.read_split(path, data.obs_names) == "train"])
        out[split] = train | {c for lab in train for c in contract.components(lab)}
    return out


def run_mask_stability(runs: list[dict], latent_paths: list[str], enrichment_path: str | None,
                       out_pairs: str, out_support: str, out_figure: str,
                       threshold: float = 0.5, alpha: float = 0.05,
                       min_seeds: int | None = None,
                       trained: dict[str, set[str]] | None = None) -> pd.DataFrame:
    """``trained``: per split, the perturbations compared (default: every row)."""
    if len(runs) != len(latent_paths):
        raise ValueError(f"{len(runs)} runs but {len(latent_paths)} latents files")
    masks, skipped = {}, set()
    for run, path in zip(runs, latent_paths):
        latents = ad.read_h5ad(path)
        layer = latents.layers.get("mask_prob") if "mask_prob" in latents.layers else None
        if not ms.is_masked(layer):  # no mask, or the mask-off ablation's fixed ones
            skipped.add(run["model"])
            continue
        frame = pd.DataFrame(layer, index=latents.obs_names.astype(str))
        if trained is not None:
            frame = frame[frame.index.isin(trained[run["split"]])]
        masks[(run["model"], run["split"], int(run["seed"]))] = frame
    if skipped:
        log.info("no learned mask (left out): %s", sorted(skipped))
    pairs = ms.pair_table(masks, threshold)
    _write_tsv(pairs, out_pairs)
    seeds: dict[tuple[str, str], list[int]] = {}
    for model, split, seed in masks:
        seeds.setdefault((model, split), []).append(seed)
    if enrichment_path and os.path.getsize(enrichment_path) > 0:
        enrichment = pd.read_csv(enrichment_path, sep="\t")
        enrichment = enrichment[[(m, s) in seeds for m, s in
                                 zip(enrichment["model"], enrichment["split"])]]
        support = ms.seed_support(enrichment, seeds, alpha, min_seeds)
    else:
        support = pd.DataFrame(columns=ms.SUPPORT_COLUMNS)
    _write_tsv(support, out_support)
    from samsbench.plots_mask_stability import draw_mask_stability

    draw_mask_stability(pairs, out_figure)
    return pairs


def _write_tsv(frame: pd.DataFrame, path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    frame.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    os.replace(tmp, path)
