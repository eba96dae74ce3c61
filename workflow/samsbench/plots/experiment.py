"""Figures of an experiment (matplotlib/seaborn, written as PNG for the HTML report)."""

from __future__ import annotations


import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

def family_card(family: str) -> dict:
    """A family's label and colour, as its class declares them (models.card); a family the
    registry does not know (an external predictions file) is labelled by its name."""
    from samsbench import models as registry

    try:
        return registry.card(family)
    except ValueError:
        return {"label": family, "colour": ""}


def family_label(family: str) -> str:
    return family_card(family)["label"]


def model_palette(models: pd.DataFrame) -> dict:
    """Colour per model name, from its family; further models of one family (variants) get
    darker shades of it, and plug-ins a stable extra colour."""
    extra = sns.color_palette("tab10", 10)
    palette, seen = {}, {}
    for i, (model, family) in enumerate(sorted(set(zip(models["model"], models["family"])))):
        base = np.array(matplotlib.colors.to_rgb(family_card(family)["colour"] or extra[i % 10]))
        shade = seen.get(family, 0)
        seen[family] = shade + 1
        palette[model] = tuple(base * (1 - 0.3 * min(shade, 2)))
    return palette


SPLIT_MARKERS = ["o", "s", "D", "^", "v", "P", "X"]


def relative_to(table: pd.DataFrame, reference: str) -> pd.DataFrame:
    """``value`` minus the reference model's value of the same metric, subset, split and seed
    (the paper's relative IWELBO, taken per seed before averaging); rows without a matching
    reference run are dropped."""
    keys = ["metric", "subset", "split", "seed"]
    base = table[table["model"] == reference][keys + ["value"]].rename(columns={"value": "_ref"})
    out = table.merge(base, on=keys, how="inner")
    return out.assign(value=out["value"] - out["_ref"]).drop(columns="_ref")


def metric_dots(table: pd.DataFrame, panels: list[tuple[str, str, str]], models: pd.DataFrame,
                title: str, reasons: dict | None = None, reference_line: float | None = None,
                reference: str | None = None):
    """One panel per (metric, subset, axis label): a row per model, each seed a point
    (marker = split), the mean ± sd over seeds as a bar when there are several seeds, the
    mean written beside it. The x axis is zoomed to the values, so differences of a fraction
    of the scale show. A model without a value gets the reason from ``reasons[(model,
    metric)]`` in place of a point; ``reference_line`` draws a dashed line (e.g. 0)."""
    reasons = reasons or {}
    names = list(dict.fromkeys(models["model"]))
    palette = model_palette(models)
    splits = sorted(table["split"].astype(str).unique())
    spacing = 0.3 if len(splits) > 1 else 0.0  # sub-rows of one model, one per split
    height = 1.5 + 0.42 * len(names) * max(1.0, 0.6 * len(splits)) + (0.45 if splits[1:] else 0)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), height), squeeze=False,
                             sharey=True)
    for ax, (metric, subset, xlabel) in zip(axes[0], panels):
        part = table[(table["metric"] == metric) & (table["subset"] == subset)]
        values = part["value"].astype(float)
        finite = values[np.isfinite(values)]
        lo, hi = (finite.min(), finite.max()) if len(finite) else (0.0, 1.0)
        if reference_line is not None:
            lo, hi = min(lo, reference_line), max(hi, reference_line)
        pad = (hi - lo) * 0.25 or max(abs(hi), 1.0) * 0.05
        ax.set_xlim(lo - pad, hi + pad)
        if reference_line is not None:
            ax.axvline(reference_line, color="#666", linestyle="--", linewidth=0.8)
        for y, model in enumerate(names):
            rows = part[part["model"] == model]
            vals = rows["value"].astype(float)
            ok = np.isfinite(vals.to_numpy())
            if not ok.any():
                reason = reasons.get((model, metric), "no value")
                ax.text(0.02, y, reason, va="center", ha="left", fontsize=7, color="#777",
                        style="italic", transform=ax.get_yaxis_transform())
                continue
            colour = palette.get(model, "#333")
            # one sub-row per split: seeds as points, mean ± sd over seeds of that split
            for i, split in enumerate(splits):
                mine = vals[(rows["split"].astype(str) == split).to_numpy() & ok]
                yy = y + (i - (len(splits) - 1) / 2) * spacing
                prefix = f"{split}: " if len(splits) > 1 else ""
                if not len(mine):
                    ax.text(1.02, yy, prefix + "n/a", va="center", ha="left", fontsize=6.5,
                            clip_on=False, transform=ax.get_yaxis_transform(), color="#777")
                    continue
                ax.scatter(mine, np.full(len(mine), yy), s=22, color=colour,
                           marker=SPLIT_MARKERS[i % len(SPLIT_MARKERS)], zorder=3,
                           edgecolor="black", linewidth=0.4, alpha=0.9)
                mean = mine.mean()
                sd = mine.std(ddof=1) if len(mine) > 1 else 0.0
                if len(mine) > 1:
                    ax.errorbar(mean, yy, xerr=sd, fmt="|", color="black", capsize=2.5,
                                zorder=4, markersize=9, linewidth=1)
                label = f"{mean:.3g}" + (f" ± {sd:.2g}" if len(mine) > 1 else "")
                if model == reference:
                    label = "reference"
                # the mean beside the panel, outside the data, in the split's sub-row
                ax.text(1.02, yy, prefix + label, va="center", ha="left", fontsize=6.5,
                        clip_on=False, transform=ax.get_yaxis_transform())
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(names)
        ax.set_ylim(len(names) - 0.5, -0.5)
        ax.grid(axis="x", color="#eee")
        ax.set_title(f"{metric} ({subset} subset)", fontsize=10)
        ax.set_xlabel(xlabel)
    if len(splits) > 1:
        handles = [plt.Line2D([], [], marker=SPLIT_MARKERS[i % len(SPLIT_MARKERS)],
                              linestyle="", color="#555", label=s) for i, s in enumerate(splits)]
        # below the panels: the mean labels take the space right of each panel
        fig.legend(handles=handles, title="split", loc="lower center", ncol=len(splits),
                   bbox_to_anchor=(0.5, 0.0), fontsize=8, title_fontsize=8)
    fig.suptitle(title, fontsize=10)
    # fixed margins in inches (the mean labels sit outside each panel; savefig crops tight)
    bottom = 1.05 if len(splits) > 1 else 0.6
    fig.subplots_adjust(top=1 - 0.7 / height, bottom=bottom / height, wspace=0.45)
    return fig


def training_curves(runs: list[dict], histories: list[pd.DataFrame]):
    """Validation reconstruction term per step, one panel per split; ``histories`` match
    ``runs``. Not the loss: each family's loss has its own KL terms (SAMS-VAE's masks and
    embeddings, for one), so losses of different models are not comparable; the expected
    negative log-likelihood of the held-out cells is (histories without it: the loss)."""
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
            y = "val_reconstruction" if "val_reconstruction" in part and \
                part["val_reconstruction"].notna().any() else "val_loss"
            sns.lineplot(data=part, x="step", y=y, hue="model", palette=palette,
                         ax=ax, errorbar=None)
            ax.set_xlabel("training step")
            if y == "val_loss":
                ax.set_title(f"validation loss, split {split}")
                ax.set_ylabel("validation loss (negative ELBO per cell)")
            else:
                ax.set_title(f"validation reconstruction, split {split}", fontsize=10)
                ax.set_ylabel("−E_q[log p(x | z)] per held-out cell\n(KL terms left out: "
                              "they differ by model)", fontsize=8)
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def class_scores_plot(table: pd.DataFrame):
    """Per combination class (x) the score of every model (one line each), one panel per
    metric: where composing in a latent space helps and where additivity fails (issue 22)."""
    if table.empty:
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no combination classes in this experiment", ha="center")
        return fig
    metrics = list(dict.fromkeys(table["metric"]))
    subsets = list(dict.fromkeys(table["subset"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.8), squeeze=False)
    models = table.drop_duplicates("model")[["model", "family"]]
    colours = model_palette(models)
    for ax, metric in zip(axes[0], metrics):
        part = table[table["metric"] == metric].groupby(["model", "subset"])["mean"].mean()
        for model in models["model"]:
            if model not in part.index.get_level_values(0):
                continue
            values = part[model].reindex(subsets)
            ax.plot(range(len(subsets)), values.to_numpy(), "o-", color=colours[model],
                    label=model, lw=1, ms=3)
        ax.set_xticks(range(len(subsets)), [s.replace("_", "\n") for s in subsets], fontsize=7)
        ax.set_title(metric, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle("Held-out combinations by class (mean over seeds)", fontsize=10)
    fig.tight_layout()
    return fig
