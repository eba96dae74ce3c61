"""Figure of mask stability across seeds: one point per pair of seeds, per model and split."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

MEASURES = [("jaccard", "matched Jaccard of\nthresholded masks"),
            ("q_correlation", "Pearson r of matched q(mask)"),
            ("entry_agreement", "matched entry agreement")]


def draw_mask_stability(pairs: pd.DataFrame, path: str) -> None:
    fig, axes = plt.subplots(1, len(MEASURES), figsize=(4 * len(MEASURES), 3.2), squeeze=False)
    if pairs.empty:
        fig.text(0.5, 0.5, "no masked model with two or more seeds", ha="center", va="center")
        for ax in axes[0]:
            ax.set_axis_off()
    else:
        groups = sorted({(m, s) for m, s in zip(pairs["model"], pairs["split"])})
        labels = [f"{m}\n{s}" for m, s in groups]
        for ax, (column, title) in zip(axes[0], MEASURES):
            for i, (model, split) in enumerate(groups):
                values = pairs.loc[(pairs.model == model) & (pairs.split == split), column]
                ax.scatter([i] * len(values), values, color="#1b9e77", alpha=0.8, zorder=3)
                if values.notna().any():
                    ax.hlines(values.mean(), i - 0.3, i + 0.3, color="black", zorder=4)
            ax.set_xticks(range(len(groups)), labels, rotation=45, ha="right", fontsize=8)
            ax.set_ylim(-0.05 if column != "q_correlation" else -1.05, 1.05)
            ax.set_title(title, fontsize=9)
            ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
