"""The paper's figures and rendered tables (the reference's figures; stages.figures writes them).

Colours come from the family classes (plots.experiment.family_card), so a model has the same colour in every figure.
"""

from __future__ import annotations

import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import CenteredNorm  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from samsbench import paper  # noqa: E402
from samsbench.plots.experiment import family_card  # noqa: E402

# The bar plots' display names (reference §6): the paper's SAMS-VAE is the correlated guide.
BAR_LABELS = {"sams_vae": "SAMS-VAE", "cpa_vae": "CPA-VAE", "conditional_vae": "Conditional VAE",
              "svae_plus": "SVAE+"}


def label(family: str, encoding: str | None = None, short: bool = False) -> str:
    text = BAR_LABELS.get(family, family) if short else family_card(family)["label"]
    if encoding == "unique":
        text += " (unique)"
    return text


def colour(family: str):
    return family_card(family)["colour"] or "#444444"


def _no_data(ax, text="no runs with this metric"):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")


def _fraction_ticks(ax, fractions):
    ax.set_xticks(range(len(fractions)))
    ax.set_xticklabels([f"{f:g}" for f in fractions])


# ----------------------------------------------------------------------------- Norman


def norman_bars(rows: pd.DataFrame, metric: str, ylabel: str, xlabel: str, title: str):
    """Grouped bars per fraction, one bar per model (SAMS-VAE, CPA-VAE, Conditional VAE,
    SVAE+), error bars ±1 sd over split seeds, a black line at 0, legend outside right."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    rows = rows[rows["family"].isin(paper.BAR_FAMILIES)]
    fractions = sorted(rows["fraction"].unique()) if len(rows) else []
    families = [f for f in paper.BAR_FAMILIES if f in set(rows["family"])]
    width = 1 / (len(families) + 2) if families else 0.2
    drawn = False
    for i, family in enumerate(families):
        part = rows[rows["family"] == family].set_index("fraction").reindex(fractions)
        x = np.arange(len(fractions)) + (i - (len(families) - 1) / 2) * width
        means = part[f"{metric}_mean"].to_numpy(dtype=float)
        sds = np.nan_to_num(part[f"{metric}_sd"].to_numpy(dtype=float))
        encoding = part["encoding"].dropna().iloc[0] if part["encoding"].notna().any() else None
        ax.bar(x, means, width, yerr=sds, capsize=2, color=colour(family),
               label=label(family, encoding, short=True), edgecolor="black", linewidth=0.4)
        drawn = drawn or np.isfinite(means).any()
    ax.axhline(0, color="black", lw=0.8)
    _fraction_ticks(ax, fractions)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("\n".join(textwrap.wrap(ylabel, 40)))
    ax.set_title(title)
    if families:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, title="model")
    if not drawn:
        _no_data(ax)
    return fig


def norman_lines(rows: pd.DataFrame, metric: str, ylabel: str, xlabel: str, title: str,
                 band: bool = True):
    """Mean over split seeds against the fraction, one line per model, ±1 sd band."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    drawn = False
    for family, part in rows.groupby("family", sort=False):
        part = part.sort_values("fraction")
        mean = part[f"{metric}_mean"].to_numpy(dtype=float)
        if not np.isfinite(mean).any():
            continue
        sd = np.nan_to_num(part[f"{metric}_sd"].to_numpy(dtype=float))
        x = part["fraction"].to_numpy(dtype=float)
        encoding = part["encoding"].iloc[0]
        ax.plot(x, mean, marker="o", ms=4, color=colour(family), label=label(family, encoding))
        if band:
            ax.fill_between(x, mean - sd, mean + sd, color=colour(family), alpha=0.25, lw=0)
        drawn = True
    ax.set_xlabel(xlabel)
    ax.set_ylabel("\n".join(textwrap.wrap(ylabel, 40)))
    ax.set_title(title)
    if drawn:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, title="model")
        fractions = sorted(rows["fraction"].unique())
        ax.set_xticks(fractions)
        ax.set_xticklabels([f"{f:g}" for f in fractions])
    else:
        _no_data(ax)
    return fig


# ----------------------------------------------------------------------------- tables


def table_figure(frame: pd.DataFrame, title: str, note: str = ""):
    """A table rendered as an image (for the report and slides); the TSV is the data."""
    row_h, title_h, note_h = 0.24, 0.45, (0.3 if note else 0.05)
    n_rows = max(len(frame), 1)
    widths = [max([len(str(c)), 3] + [len(str(v)) for v in frame[c]]) + 2 for c in frame.columns]
    total = max(sum(widths), 1)
    fig_w = min(max(0.085 * total, 0.09 * len(title) + 0.5, 4.0), 24)
    table_h = row_h * (n_rows + 1)
    fig_h = table_h + title_h + note_h
    fig = plt.figure(figsize=(fig_w, fig_h))
    ax = fig.add_axes([0.005, note_h / fig_h, 0.99, table_h / fig_h])
    ax.set_axis_off()
    if len(frame) and len(frame.columns):
        table = ax.table(cellText=frame.astype(str).to_numpy(), colLabels=list(frame.columns),
                         cellLoc="center", colWidths=[w / total for w in widths],
                         bbox=[0, 0, 1, 1])
        table.auto_set_font_size(False)
        table.set_fontsize(8)
        for (r, _), cell in table.get_celld().items():
            cell.set_linewidth(0.3)
            if r == 0:
                cell.set_facecolor("#e8e8e8")
                cell.set_text_props(weight="bold")
            elif r % 2 == 0:
                cell.set_facecolor("#f7f7f7")
    else:
        _no_data(ax, "empty table")
    fig.text(0.5, 1 - 0.5 * title_h / fig_h, title, ha="center", va="center", fontsize=10)
    if note:
        fig.text(0.005, 0.5 * note_h / fig_h, note, fontsize=7.5, color="#444444",
                 va="center")
    return fig  # no tight bbox when saved: the layout above is already exact


# ----------------------------------------------------------------------------- Replogle


def training_curves(curves: list[tuple[str, str, pd.DataFrame]]):
    """Training and validation loss (negative ELBO per cell) against step, one line per model
    (its figure run). ``curves``: (family, title, history) tuples."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    drawn = False
    for family, name, hist in curves:
        if hist.empty:
            continue
        for ax, column in zip(axes, ("train_loss", "val_loss")):
            ax.plot(hist["step"], hist[column], color=colour(family), label=name, lw=1.2)
        drawn = True
    for ax, what in zip(axes, ("training", "validation")):
        ax.set_xlabel("training step")
        ax.set_ylabel(f"{what} loss (negative ELBO per cell)")
        ax.set_title(f"{what} loss")
        if drawn:
            low, high = _robust_limits(ax)
            if low is not None:
                ax.set_ylim(low, high)
        else:
            _no_data(ax, "no training history")
    if drawn:
        axes[1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False,
                       title="model (figure run)", fontsize=8)
    return fig


def _robust_limits(ax):
    """Y range without the first steps' huge losses: minimum to 90th percentile, padded."""
    values = np.concatenate([line.get_ydata() for line in ax.get_lines()] or [np.array([])])
    values = values[np.isfinite(values)]
    if len(values) < 4:
        return None, None
    low, high = np.percentile(values, [0, 90])
    pad = 0.08 * (high - low or abs(high) or 1)
    return low - pad, high + pad


def pathway_order(perturbations: list[str], pathways: dict) -> tuple[list[int], list[str]]:
    """Rows in the pathways sorted by (pathway name, perturbation) and their pathway; a
    perturbation listed in several pathways is shown in each (as the reference's 345 rows)."""
    position = {p: i for i, p in enumerate(perturbations)}
    rows, groups = [], []
    for name in sorted(pathways):
        for label in sorted(set(pathways[name])):
            if label in position:
                rows.append(position[label])
                groups.append(name)
    return rows, groups


def latent_heatmaps(panels: list[dict], layer: str, pathways: dict | None,
                    title: str) -> None:
    """One heatmap per model of a per-perturbation latent (rows) × latent dimension.

    layer mask_prob: viridis, 0-1 (reference D2/D3); embedding_mean: diverging, centred at 0
    (D4). With ``pathways`` only the perturbations in the pathways, sorted by pathway and
    separated by light-grey lines, pathway names on the left; else every perturbation in the
    model's column order. ``panels``: dicts with name, family and latents (AnnData).
    """
    panels = [p for p in panels if layer in p["latents"].layers]
    n = max(len(panels), 1)
    height = 6.5 if pathways else 5.5
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n + 1.2, height), squeeze=False)
    cmap = "viridis" if layer == "mask_prob" else "RdBu_r"
    for ax, panel in zip(axes[0], panels):
        latents = panel["latents"]
        values = np.asarray(latents.layers[layer], dtype=float)
        groups = None
        if pathways:
            rows, groups = pathway_order(list(latents.obs_names), pathways)
            values = values[rows]
        if layer == "mask_prob":
            image = ax.imshow(values, aspect="auto", cmap=cmap, vmin=0, vmax=1,
                              interpolation="nearest")
        else:
            image = ax.imshow(values, aspect="auto", cmap=cmap, norm=CenteredNorm(),
                              interpolation="nearest")
        if values.size == 0:
            _no_data(ax, "no perturbation in the pathways")
        bar = fig.colorbar(image, ax=ax, location="top", fraction=0.04, pad=0.02)
        what = "mask probability q(m)" if layer == "mask_prob" else "embedding mean E[e]"
        bar.ax.set_title(f"{panel['name']}\n{what}", fontsize=8.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if groups:
            starts = [0] + [i for i in range(1, len(groups)) if groups[i] != groups[i - 1]]
            for start in starts[1:]:
                # light grey as the reference on viridis; darker on the near-white diverging map
                ax.axhline(start - 0.5, color="lightgrey" if layer == "mask_prob" else "0.45",
                           lw=0.9)
            ends = starts[1:] + [len(groups)]
            ax.set_yticks([(s + e - 1) / 2 for s, e in zip(starts, ends)])
            ax.set_yticklabels([groups[s].replace("_", " ").lower() for s in starts],
                               fontsize=7)
            ax.set_ylabel("perturbation, grouped by pathway")
        else:
            ax.set_yticks([])
            ax.set_ylabel(f"perturbation ({values.shape[0]})")
        ax.set_xlabel(f"latent dimension ({values.shape[1]})")
    if not panels:
        _no_data(axes[0][0], "no model with this latent")
        axes[0][0].set_axis_off()
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig
