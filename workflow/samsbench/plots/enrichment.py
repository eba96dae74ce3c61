"""Figures of the mask enrichment analysis (matplotlib, Agg backend: no display needed).

* ``mask_heatmaps``: mask probabilities with perturbations grouped by gene set, the paper's
  Replogle figure (rows sorted by (set, gene), light-grey lines at set boundaries, viridis 0..1,
  colour bar on top), one panel per model;
* ``top_terms_dotplot``: the top enriched terms of each latent dimension;
* ``complex_recovery_plot``: AUROC and average precision of complex recovery per model and
  similarity;
* ``mask_stability_plot``: agreement of learned masks between seeds, one point per pair.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from samsbench.enrichment.gene_sets import normalise  # noqa: E402

MAX_LABELLED_ROWS = 80  # beyond this, row labels are unreadable; only set names are shown


def _empty(message: str, title: str = ""):
    """A figure that says why there is nothing to show (the workflow still needs the file)."""
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    if title:
        ax.set_title(title)
    return fig


def grouped_rows(targets: pd.Series, sets: Mapping[str, Iterable[str]], max_sets: int = 8):
    """[(set, [perturbation labels])] sorted by set name, members sorted by (gene, label).

    Only single perturbations whose target lies in a set are shown; a gene in two sets appears
    in both. With more than ``max_sets`` sets (a big library), the largest ones are kept.
    """
    single = {lab: t[0] for lab, t in targets.items() if len(t) == 1}
    groups = []
    for name, genes in sets.items():
        genes = {normalise(g) for g in genes}
        members = sorted((g, lab) for lab, g in single.items() if g in genes)
        if members:
            groups.append((str(name), [lab for _, lab in members]))
    if len(groups) > max_sets:
        groups = sorted(groups, key=lambda x: (-len(x[1]), x[0]))[:max_sets]
    return sorted(groups)


def _dim_order(values: np.ndarray, bounds: list[int]) -> np.ndarray:
    """Latent dims ordered by the group they are most active in, so blocks line up."""
    means = np.stack([values[a:b].mean(0) for a, b in zip(bounds[:-1], bounds[1:])])
    best = means.argmax(0)
    return np.lexsort((-means.max(0), best))


def _heatmap_panel(
    ax, mask: pd.DataFrame, groups, order_dims: bool, set_labels: bool, row_labels: bool
):
    rows = [lab for _, members in groups for lab in members]
    values = mask.loc[rows].to_numpy(dtype=float)
    bounds = np.cumsum([0] + [len(m) for _, m in groups]).tolist()
    cols = (
        _dim_order(values, bounds) if order_dims and len(groups) > 1 else np.arange(values.shape[1])
    )
    image = ax.imshow(
        values[:, cols], aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest"
    )
    for b in bounds[1:-1]:
        ax.axhline(b - 0.5, color="lightgrey", lw=0.8)
    # set names at the centre of their block (first panel); gene labels on the right (last panel)
    centres = [(a + b - 1) / 2 for a, b in zip(bounds[:-1], bounds[1:])]
    ax.set_yticks(centres)
    ax.set_yticklabels([name for name, _ in groups] if set_labels else [], fontsize=7)
    if set_labels:
        ax.set_ylabel("perturbations grouped by gene set")
    if row_labels and len(rows) <= MAX_LABELLED_ROWS:
        right = ax.secondary_yaxis("right")
        right.set_yticks(range(len(rows)))
        right.set_yticklabels(rows, fontsize=5)
    names = mask.columns[cols]
    step = max(1, len(names) // 30)
    ax.set_xticks(range(0, len(names), step))
    ax.set_xticklabels(names[::step], rotation=90, fontsize=6)
    ax.set_xlabel("latent dimension")
    return image


def mask_heatmaps(
    panels: list[tuple[str, pd.DataFrame, pd.Series]],
    sets: Mapping[str, Iterable[str]],
    library: str = "",
    max_sets: int = 8,
    order_dims: bool = True,
):
    """One heatmap per (title, mask_prob perturbations × dims, targets) panel, side by side.

    Latent dims are reordered per panel (by the set they are most active in): learned dims
    have no fixed order, and aligned blocks are what the eye compares.
    """
    usable = [(t, m, tg, grouped_rows(tg, sets, max_sets)) for t, m, tg in panels]
    usable = [p for p in usable if p[3]]
    if not usable:
        return _empty(
            f"no model with masks, or no perturbation in a {library or 'gene'} set",
            "mask probabilities grouped by gene set",
        )
    n_rows = max(sum(len(m) for _, m in p[3]) for p in usable)
    same_rows = all(p[3] == usable[0][3] for p in usable)
    fig, axes = plt.subplots(
        1,
        len(usable),
        squeeze=False,
        layout="constrained",
        figsize=(3.6 * len(usable) + 3.5, min(2.5 + 0.12 * n_rows, 30)),
    )
    last = len(usable) - 1
    for i, (ax, (title, mask, _, groups)) in enumerate(zip(axes[0], usable)):
        image = _heatmap_panel(
            ax,
            mask,
            groups,
            order_dims,
            set_labels=i == 0 or not same_rows,
            row_labels=i == last or not same_rows,
        )
        bar = fig.colorbar(image, ax=ax, location="top", fraction=0.04, pad=0.01)
        bar.set_label("mask probability", fontsize=7)
        bar.ax.tick_params(labelsize=6)
        bar.ax.set_title(title, fontsize=9)
    fig.suptitle(f"Mask probabilities, perturbations grouped by {library or 'gene set'}")
    return fig


def top_terms_dotplot(
    table: pd.DataFrame,
    library: str = "",
    alpha: float = 0.05,
    per_dim: int = 2,
    max_terms: int = 40,
):
    """Top enriched terms per latent dim: one facet per run, size = overlap, colour = -log10 FDR.

    ``table``: enrichment rows of one library (one facet per model/split/seed in it, so a model
    with no significant term shows an empty facet rather than disappearing). Only terms at
    FDR < alpha are drawn.
    """
    title = f"Top enriched terms per latent dimension (FDR < {alpha})"
    sig = table[table["fdr"] < alpha] if len(table) else table
    if len(sig) == 0:
        return _empty(f"no term at FDR < {alpha} in {library or 'this library'}", title)
    keys = ["model", "split", "seed"]
    runs = table[keys].drop_duplicates().sort_values(keys).reset_index(drop=True)
    sig = sig.sort_values(["pvalue", "term"]).groupby(keys + ["latent_dim"]).head(per_dim)
    keep_terms = sig.groupby("term")["fdr"].min().nsmallest(max_terms).index
    sig = sig[sig["term"].isin(keep_terms)].copy()
    sig["score"] = -np.log10(sig["fdr"].clip(lower=1e-300))
    dims = sorted(sig["latent_dim"].unique(), key=lambda d: (len(str(d)), str(d)))
    # terms top to bottom in the order of the first dim they mark: a readable diagonal
    first = sig.assign(d=sig["latent_dim"].map(dims.index)).groupby("term")[["d", "fdr"]].min()
    terms = first.sort_values(["d", "fdr"], ascending=[False, False]).index.tolist()
    vmax = max(float(sig["score"].max()), 2.0)
    smax = float(sig["overlap"].max())
    width = 3.0 + len(runs) * max(2.0, 0.35 * len(dims)) + 1.5
    fig, axes = plt.subplots(
        1,
        len(runs),
        squeeze=False,
        sharey=True,
        layout="constrained",
        figsize=(width, max(2.8, 1.6 + 0.25 * len(terms))),
    )
    points = None
    for ax, (_, run) in zip(axes[0], runs.iterrows()):
        sub = sig[(sig[keys] == run[keys]).all(axis=1)]
        if len(sub):
            points = ax.scatter(
                [dims.index(d) for d in sub["latent_dim"]],
                [terms.index(t) for t in sub["term"]],
                s=20 + 180 * sub["overlap"] / smax,
                c=sub["score"],
                cmap="viridis",
                vmin=0,
                vmax=vmax,
                edgecolors="k",
                linewidths=0.3,
            )
        else:
            ax.text(
                0.5,
                0.5,
                f"no term at\nFDR < {alpha}",
                transform=ax.transAxes,
                ha="center",
                va="center",
                fontsize=8,
                color="grey",
            )
        ax.set_xticks(range(len(dims)))
        ax.set_xticklabels(dims, rotation=90, fontsize=7)
        ax.set_xlim(-0.7, len(dims) - 0.3)
        ax.set_xlabel("latent dimension")
        ax.set_title(f"{run['model']}\n{run['split']} / seed {run['seed']}", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_yticks(range(len(terms)))
    axes[0][0].set_yticklabels([t if len(t) <= 60 else t[:57] + "..." for t in terms], fontsize=7)
    axes[0][0].set_ylabel(f"term ({library})" if library else "term")
    axes[0][0].set_ylim(-0.7, len(terms) - 0.3)
    fig.colorbar(points, ax=axes[0].tolist(), label="-log10 FDR", fraction=0.03, aspect=15)
    handles = [
        plt.scatter([], [], s=20 + 180 * n / smax, c="grey")
        for n in sorted({1, round(smax / 2), int(smax)})
        if n > 0
    ]
    labels = [str(n) for n in sorted({1, round(smax / 2), int(smax)}) if n > 0]
    fig.legend(
        handles,
        labels,
        title="overlap",
        loc="outside right upper",
        fontsize=7,
        title_fontsize=7,
        frameon=False,
    )
    fig.suptitle(title)
    return fig


def complex_recovery_plot(table: pd.DataFrame):
    """AUROC and average precision per model and similarity; points are seeds' mean ± sd."""
    import seaborn as sns

    data = table.dropna(subset=["auroc"]) if len(table) else table
    if len(data) == 0:
        return _empty("no complex-recovery score (no annotated pairs)", "complex recovery")
    hue_order = [
        h
        for h in ("mask_jaccard", "embedding_abs_cosine", "effect_abs_pearson")
        if h in set(data["similarity"])
    ]
    splits = sorted(data["split"].astype(str).unique())
    fig, axes = plt.subplots(
        len(splits),
        2,
        squeeze=False,
        figsize=(max(6, 1.1 * data["model"].nunique()) * 2, 3.4 * len(splits)),
    )
    for r, split in enumerate(splits):
        sub = data[data["split"].astype(str) == split]
        # models best first; only those with a score in this split (seaborn fails on empty ones)
        order = sub.groupby("model")["auroc"].max().sort_values(ascending=False).index.tolist()
        for c, (metric, label) in enumerate(
            [("auroc", "AUROC"), ("average_precision", "average precision")]
        ):
            ax = axes[r][c]
            sns.pointplot(
                data=sub,
                x="model",
                y=metric,
                hue="similarity",
                order=order,
                hue_order=hue_order,
                errorbar="sd",
                dodge=0.4,
                linestyle="none",
                markers="o",
                ax=ax,
            )
            if metric == "auroc":
                ax.axhline(0.5, color="grey", ls="--", lw=0.8)
                ax.set_ylim(0, 1.02)
            else:
                # chance level of average precision = share of positive pairs
                base = (sub["n_positive_pairs"] / sub["n_pairs"]).median()
                ax.axhline(base, color="grey", ls="--", lw=0.8)
                ax.set_ylim(0, 1.02)
            ax.set_xlabel("model")
            ax.set_ylabel(label)
            lib = ", ".join(sorted(sub["library"].astype(str).unique()))
            ax.set_title(f"split {split}: pairs sharing a {lib} set", fontsize=9)
            ax.tick_params(axis="x", rotation=30)
            if c == 0 and r == 0:
                ax.legend(title="similarity", fontsize=7, title_fontsize=7)
            elif ax.get_legend() is not None:
                ax.get_legend().remove()
    fig.tight_layout()
    return fig


STABILITY_MEASURES = [("jaccard", "matched Jaccard of\nthresholded masks"),
                      ("q_correlation", "Pearson r of matched q(mask)"),
                      ("entry_agreement", "matched entry agreement")]


def mask_stability_plot(pairs: pd.DataFrame):
    """One point per pair of seeds (``enrichment.stability.pair_table``), per model and split,
    with the mean as a bar; one panel per measure."""
    if pairs.empty:
        return _empty("no masked model with two or more seeds", "mask stability across seeds")
    n = len(STABILITY_MEASURES)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.2), squeeze=False)
    groups = sorted({(m, s) for m, s in zip(pairs["model"], pairs["split"])})
    for ax, (column, title) in zip(axes[0], STABILITY_MEASURES):
        for i, (model, split) in enumerate(groups):
            values = pairs.loc[(pairs["model"] == model) & (pairs["split"] == split), column]
            ax.scatter([i] * len(values), values, color="#1b9e77", alpha=0.8, zorder=3)
            if values.notna().any():
                ax.hlines(values.mean(), i - 0.3, i + 0.3, color="black", zorder=4)
        ax.set_xticks(range(len(groups)), [f"{m}\n{s}" for m, s in groups], rotation=45,
                      ha="right", fontsize=8)
        ax.set_ylim(-1.05 if column == "q_correlation" else -0.05, 1.05)  # r may be negative
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def program_rate_plot(rates: pd.DataFrame):
    """Planted-program recovery rate over seeds: models x programs, each cell the share of
    seeds recovering the program (FDR < alpha as top term), annotated 'k/n' and the median FDR."""
    if rates.empty:
        return _empty("no planted programs (no masked model, or not a simulation)",
                      "Planted-program recovery over seeds")
    rows = [f"{m} / {s}" if rates["split"].nunique() > 1 else str(m)
            for m, s in zip(rates["model"], rates["split"])]
    table = rates.assign(row=rows)
    grid = table.pivot(index="row", columns="program", values="rate")
    fig, ax = plt.subplots(figsize=(2.2 + 1.8 * grid.shape[1], 1.2 + 0.5 * grid.shape[0]))
    image = ax.imshow(grid.to_numpy(dtype=float), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for r in table.itertuples():
        i, j = grid.index.get_loc(r.row), grid.columns.get_loc(r.program)
        ax.text(j, i, f"{r.n_recovered}/{r.n_seeds}\nFDR {r.median_fdr:.2g}", ha="center",
                va="center", fontsize=8, color="white" if r.rate < 0.6 else "black")
    ax.set_xticks(range(grid.shape[1]), [textwrap_label(c) for c in grid.columns], fontsize=8)
    ax.set_yticks(range(grid.shape[0]), grid.index, fontsize=8)
    fig.colorbar(image, ax=ax, label="recovered in this share of seeds")
    ax.set_title("Planted-program recovery over seeds (median FDR of the program)")
    fig.tight_layout()
    return fig


def textwrap_label(text: str, width: int = 18) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(str(text), width)) or str(text)
