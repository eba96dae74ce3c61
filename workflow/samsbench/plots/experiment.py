"""Figures of an experiment (matplotlib/seaborn, written as PNG for the HTML report)."""

from __future__ import annotations


import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

# One colour per family, the same in every figure.
FAMILY_COLOURS = {
    "sams_vae": "#1b9e77",
    "sams_vae_mean_field": "#66c2a5",
    "sams_vae_no_mask": "#a6d854",
    "cpa_vae": "#d95f02",
    "conditional_vae": "#7570b3",
    "svae_plus": "#e7298a",
    "control_mean": "#999999",
    "additive_mean": "#a6761d",
    "train_mean": "#666666",
    "linear": "#e6ab02",
    "replicate": "#222222",
}
FAMILY_LABELS = {
    "sams_vae": "SAMS-VAE (correlated)",
    "sams_vae_mean_field": "SAMS-VAE (mean field)",
    "sams_vae_no_mask": "SAMS-VAE (mask off)",
    "cpa_vae": "CPA-VAE",
    "conditional_vae": "Conditional VAE",
    "svae_plus": "SVAE+",
    "control_mean": "Control mean",
    "additive_mean": "Additive mean",
    "train_mean": "Training mean",
    "linear": "Linear (PCA + ridge)",
    "replicate": "Replicate (split-half)",
}


def model_palette(models: pd.DataFrame) -> dict:
    """Colour per model name, from its family; further models of one family (variants) get
    darker shades of it, and plug-ins a stable extra colour."""
    extra = sns.color_palette("tab10", 10)
    palette, seen = {}, {}
    for i, (model, family) in enumerate(sorted(set(zip(models["model"], models["family"])))):
        base = np.array(matplotlib.colors.to_rgb(FAMILY_COLOURS.get(family, extra[i % 10])))
        shade = seen.get(family, 0)
        seen[family] = shade + 1
        palette[model] = tuple(base * (1 - 0.3 * min(shade, 2)))
    return palette


def metric_bars(metrics: pd.DataFrame, names: list[str], subset: str, title: str):
    table = metrics[metrics["metric"].isin(names) & (metrics["subset"] == subset)]
    palette = model_palette(metrics)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        part = table[table["metric"] == name]
        if part.empty:
            ax.text(0.5, 0.5, "no value", ha="center", va="center", transform=ax.transAxes)
        else:
            sns.barplot(data=part, x="split", y="value", hue="model", palette=palette, ax=ax,
                        errorbar="sd")
            ax.legend().remove()
        ax.set_title(f"{name} ({subset})")
        ax.set_xlabel("split")
        ax.set_ylabel(name)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in palette.values()]
    fig.legend(handles, list(palette), loc="center left", bbox_to_anchor=(1.0, 0.5),
               title="model")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def training_curves(runs: list[dict], histories: list[pd.DataFrame]):
    """Validation loss per step, one panel per split; ``histories`` match ``runs``."""
    frames = []
    for run, hist in zip(runs, histories):
        if len(hist):
            hist = hist.assign(model=run["model"], family=run["family"], split=run["split"],
                               seed=run["seed"])
            frames.append(hist)
    splits = sorted({r["split"] for r in runs})
    fig, axes = plt.subplots(1, len(splits), figsize=(5 * len(splits), 3.8), squeeze=False)
    if frames:
        table = pd.concat(frames)
        palette = model_palette(table)
        for ax, split in zip(axes[0], splits):
            part = table[table["split"] == split]
            sns.lineplot(data=part, x="step", y="val_loss", hue="model", palette=palette,
                         ax=ax, errorbar=None)
            ax.set_title(f"validation loss, split {split}")
            ax.set_xlabel("training step")
            ax.set_ylabel("validation loss (negative ELBO per cell)")
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
