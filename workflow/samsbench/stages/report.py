"""The report step: an experiment's leaderboard, cost table and provenance, as TSV/JSON and as
one HTML fragment that the report's home page embeds (workflow/report/workflow.rst) and that
is a report item of its own.

The leaderboard shows, per model (and split when there are several), every test metric as
mean ± sd over seeds, and the baseline-normalised score next to it when metrics.tsv has a
``normalised`` column (the evaluation's scores); the best value of each column is marked only
where the paired bootstrap (differences.tsv) shows it beyond noise, and each model's difference
to the best simple baseline is shown with its interval. About 420 lines: the tables' data and
their HTML, kept side by side.
"""

from __future__ import annotations

import glob
import html
import json
import math
import os

import numpy as np
import pandas as pd

from samsbench import io as sbio
from samsbench import metrics as sbmetrics
from samsbench import provenance


def leaderboard_metrics() -> list[tuple[str, str]]:
    """(metric, subset) columns of the leaderboard: the test IWELBO, then every registry
    metric whose entry asks for a column (metrics.Metric.leaderboard)."""
    return [("test_iwelbo", "test")] + [(m, "test") for m in sbmetrics.leaderboard_metrics()]


def undefined_reason(metric: str, family: str, short: bool = False) -> str:
    """Why a model has no value for a metric (the table's tooltip; ``short`` for figures)."""
    if metric.endswith("iwelbo"):
        return "no likelihood (baseline)" if short else \
            "no likelihood: a baseline has no IWELBO"
    if "pearson" in metric:
        if family == "control_mean":
            return "undefined: zero prediction" if short else \
                "undefined: control mean predicts a zero effect, so Pearson r has no value"
        return "undefined: constant effects" if short else \
            "undefined: constant predicted or observed effects"
    return "no value"


# Above this many splits (the paper's grids: 25) a model's row pools every split and seed, so
# the home page stays one row per model.
MAX_SPLITS = 4
# Above this many models (grids of hundreds) the cost table has one row per family and step.
MAX_COST_MODELS = 20


def leaderboard(metrics: pd.DataFrame, differences: pd.DataFrame | None = None,
                roles: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per model x split x metric: seeds, mean, sd (and the normalised score's when
    metrics.tsv has a ``normalised`` column, with its note when it is empty), the direction,
    whether it is the column's best, and the reason when the metric is undefined for the
    model. With more than ``MAX_SPLITS`` splits the split reads ``all`` and the statistics
    pool every split and seed. ``roles`` ({family: role}, default from the model registry):
    a ceiling is never the column's best.

    ``differences`` (differences.tsv, the paired bootstrap): ``best`` marks a value only where
    it beats the runner-up beyond noise, and each model gets its difference to the best simple
    baseline with the interval (``diff``, ``diff_lo``, ``diff_hi``); metrics without a
    bootstrap are never marked."""
    has_norm = "normalised" in metrics.columns
    if metrics["split"].nunique() > MAX_SPLITS:
        metrics = metrics.assign(split="all")
    rows = []
    models = metrics[["model", "family"]].drop_duplicates("model")
    for split in sorted(metrics["split"].astype(str).unique()):
        for model, family in zip(models["model"], models["family"]):
            for metric, subset in leaderboard_metrics():
                part = metrics[(metrics["model"] == model) & (metrics["split"].astype(str) == split)
                               & (metrics["metric"] == metric) & (metrics["subset"] == subset)]
                values = part["value"].astype(float).dropna()
                row = {"split": split, "model": model, "family": family, "metric": metric,
                       "subset": subset, "seeds": len(values),
                       "mean": values.mean() if len(values) else math.nan,
                       "sd": values.std(ddof=1) if len(values) > 1 else math.nan,
                       "higher_is_better": not sbmetrics.lower_is_better(metric)}
                if has_norm:
                    norm = part["normalised"].astype(float).dropna()
                    row["normalised_mean"] = norm.mean() if len(norm) else math.nan
                    row["normalised_sd"] = norm.std(ddof=1) if len(norm) > 1 else math.nan
                    notes = part.get("normalised_note", pd.Series(dtype=object)).dropna()
                    notes = [n for n in notes.astype(str) if n and n != "nan"]
                    row["normalised_note"] = notes[0] if notes else ""
                row["reason"] = "" if len(values) else undefined_reason(metric, family)
                rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    # drop metrics no model has (e.g. IWELBO in an experiment of baselines only)
    table = table[table.groupby("metric")["seeds"].transform("max") > 0].reset_index(drop=True)
    if roles is None:
        from samsbench import models as registry

        roles = registry.roles(set(table["family"].dropna().astype(str)) - {""})
    # the ceiling is what the normalised scores divide by, not a contender
    ceilings = {f for f, role in roles.items() if role == "ceiling"}
    if differences is None:
        table["best"] = _best(table, "mean", ceilings)
    else:
        table = _with_differences(table, differences)
    if has_norm:
        table["normalised_best"] = _best(table.assign(higher_is_better=True), "normalised_mean",
                                         ceilings)
    return table


def _with_differences(table: pd.DataFrame, differences: pd.DataFrame) -> pd.DataFrame:
    """best, diff, diff_lo, diff_hi, baseline from the bootstrap table (NaN/False without)."""
    cols = differences.assign(split=differences["split"].astype(str))[
        ["split", "model", "metric", "best", "diff_baseline", "diff_lo", "diff_hi", "baseline"]]
    cols = cols.rename(columns={"diff_baseline": "diff"})
    if (table["split"] == "all").all() and not (cols["split"] == "all").any():
        cols = cols.iloc[:0]  # pooled splits: the per-split bootstrap does not apply
    out = table.merge(cols, on=["split", "model", "metric"], how="left")
    out["best"] = out["best"].astype(object).where(out["best"].notna(), False).astype(bool)
    out["baseline"] = out["baseline"].fillna("")
    return out


def _best(table: pd.DataFrame, column: str, ceilings: set[str]) -> pd.Series:
    best = pd.Series(False, index=table.index)
    contenders = table[~table["family"].isin(ceilings)]
    for (_, _), part in contenders.groupby(["split", "metric"]):
        values = part[column].astype(float)
        if values.notna().any():
            target = values.max() if part["higher_is_better"].iloc[0] else values.min()
            best[part.index[np.isclose(values, target, rtol=0, atol=1e-12)]] = True
    return best


def cost_table(runs: list[dict], benchmark_root: str, steps=("train", "evaluate")) -> pd.DataFrame:
    """Per model and step (train, evaluate): jobs, wall seconds (mean, total), peak memory
    (MB, max over jobs) from Snakemake's benchmark files; steps/s from the run's summary.json."""
    rows = []
    for run in runs:
        summary = sbio.read_summary(run["dir"]) or {}
        for step in steps:
            path = sbio.run_benchmark(benchmark_root, step, run)
            row = {"model": run["model"], "family": run["family"], "step": step,
                   "seconds": math.nan, "max_rss_mb": math.nan, "steps_per_second": math.nan}
            for found in glob.glob(path):
                bench = pd.read_csv(found, sep="\t")
                row["seconds"] = float(bench["s"].iloc[0])
                if "max_rss" in bench:
                    row["max_rss_mb"] = float(pd.to_numeric(bench["max_rss"],
                                                            errors="coerce").iloc[0])
            if step == "train" and summary:
                row["steps_per_second"] = summary.get("timing", {}).get("steps_per_second",
                                                                         math.nan)
            rows.append(row)
    frame = pd.DataFrame(rows, columns=["model", "family", "step", "seconds", "max_rss_mb",
                                        "steps_per_second"])
    if frame["model"].nunique() > MAX_COST_MODELS:  # a grid: one row per family
        frame = frame.assign(model=frame["family"])
    out = frame.groupby(["model", "step"], sort=False).agg(
        family=("family", "first"), jobs=("seconds", "size"),
        seconds_mean=("seconds", "mean"), seconds_total=("seconds", lambda s: s.sum(min_count=1)),
        max_rss_mb=("max_rss_mb", "max"), steps_per_second=("steps_per_second", "mean"))
    return out.reset_index()


def experiment_provenance(resolved: dict, dataset_path: str, split_paths: dict,
                          seeds: list, device_name: str) -> dict:
    """The experiment's provenance: software, git, device, the resolved settings and sha256 of
    the prepared dataset and of each split file."""
    files = {"dataset": dataset_path, **{f"split:{k}": v for k, v in split_paths.items()}}
    return provenance.record(config=resolved, files=files, seeds=seeds, device_name=device_name)


# ------------------------------------------------------------------------------ HTML

# Sorting without a <script>: the home page inserts this fragment as innerHTML (where scripts
# do not run) but inline handlers do; cells carry their sort key in data-v.
_SORT = ("var t=this.closest('table'),b=t.tBodies[0],i=this.cellIndex,"
         "d=this.dataset.dir=this.dataset.dir==='desc'?'asc':'desc';"
         "Array.from(b.rows).sort(function(x,y){var p=x.cells[i].dataset.v,q=y.cells[i].dataset.v,"
         "a=parseFloat(p),c=parseFloat(q),r;if(isNaN(a)&&isNaN(c))r=String(p).localeCompare(q);"
         "else if(isNaN(a))return 1;else if(isNaN(c))return -1;else r=a-c;"
         "return d==='asc'?r:-r}).forEach(function(r){b.appendChild(r)})")
_STYLE = ("border-collapse:collapse;font-size:12px;margin:4px 0 12px 0;"
          "font-family:system-ui,sans-serif")
_CELL = "border:1px solid #ccc;padding:2px 6px;white-space:nowrap"
# headers wrap (metric names are long): the table fits the page without a horizontal scroll
_HEAD = ("border:1px solid #ccc;padding:2px 4px;white-space:normal;overflow-wrap:anywhere;"
         "max-width:7em;vertical-align:bottom")


def _fmt(mean: float, sd: float, n: int) -> str:
    if not np.isfinite(mean):
        return "—"
    digits = 2 if abs(mean) >= 100 else 4
    text = f"{mean:.{digits}f}"
    # the sd on its own small line keeps the columns narrow (no horizontal scroll)
    return text + (f'<br><span style="font-size:10px;color:#666">± {sd:.{digits}f}</span>'
                   if n > 1 and np.isfinite(sd) else "")


def _table(header: list[str], rows: list[list[tuple[str, object, str]]], table_id: str,
           tips: list[str] | None = None) -> str:
    """rows: cells of (text, sort key, extra style/title html attributes)."""
    tips = tips or [""] * len(header)
    head = "".join(
        f'<th style="{_HEAD};cursor:pointer;background:#f0f0f0" title="{html.escape(tip)}'
        f' (click to sort)" onclick="{_SORT}">{html.escape(h).replace("_", "_<wbr>")}</th>'
        for h, tip in zip(header, tips))
    body = "".join(
        "<tr>" + "".join(f'<td style="{_CELL}{style}" data-v="{html.escape(str(key))}"'
                         f'{attrs}>{text}</td>' for text, key, style, attrs in row) + "</tr>"
        for row in rows)
    return (f'<table id="{table_id}" class="samsbench-table" style="{_STYLE}">'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def leaderboard_html(table: pd.DataFrame, experiment: str) -> str:
    if table.empty:
        return "<p>No metrics.</p>"
    has_norm = "normalised_mean" in table.columns and table["normalised_mean"].notna().any()
    has_diff = "diff" in table.columns and table["diff"].notna().any()
    metrics = list(dict.fromkeys(table["metric"]))
    splits = list(dict.fromkeys(table["split"]))
    header = (["split"] if len(splits) > 1 else []) + ["model"]
    tips = (["the split"] if len(splits) > 1 else []) + ["model name (family)"]
    # a normalised column only for the metrics that have scores (none for IWELBO: no baseline)
    normalised = {m for m in metrics if has_norm and
                  table.loc[table["metric"] == m, "normalised_mean"].notna().any()}
    for m in metrics:
        arrow = "↓" if sbmetrics.lower_is_better(m) else "↑"
        header.append(f"{m} {arrow}")
        tips.append(f"{m} on the test subset, mean ± sd over seeds; {arrow} = better")
        if m in normalised:
            header.append(f"{m} normalised ↑")
            tips.append(f"{m} as (u − b) / (r − b): 0 = best simple baseline, 1 = the "
                        "ceiling (what the true effects would score)")
    rows = []
    for (split, model), part in table.groupby(["split", "model"], sort=False):
        part = part.set_index("metric")
        cells = [(html.escape(split), split, "", "")] if len(splits) > 1 else []
        family = part["family"].iloc[0]
        cells.append((f"{html.escape(model)}", model, "", f' title="{html.escape(family)}"'))
        for m in metrics:
            r = part.loc[m]
            columns = [("mean", "sd", "best")]
            if m in normalised:
                columns.append(("normalised_mean", "normalised_sd", "normalised_best"))
            for mean_c, sd_c, best_c in columns:
                mean, sd = float(r[mean_c]), float(r[sd_c])
                text = _fmt(mean, sd, int(r["seeds"]))
                attrs = ""
                if mean_c == "mean" and has_diff and np.isfinite(float(r["diff"])):
                    attrs = (f' title="{html.escape(_diff_text(r))} to {html.escape(r["baseline"])}'
                             ' (95% paired bootstrap interval)"')
                if not np.isfinite(mean) and mean_c == "mean":
                    attrs = f' title="{html.escape(r["reason"])}"'
                    text = f'<span style="color:#888">n/a</span>'
                style = ""
                if bool(r[best_c]):
                    text = f"<b>{text} ★</b>"
                    style = ";background:#e6f4ea"
                cells.append((text, mean if np.isfinite(mean) else "", style, attrs))
        rows.append(cells)
    n_seeds = int(table["seeds"].max())
    over = "runs (every split and seed)" if splits == ["all"] else "seeds"
    spread = f"mean ± sd over {n_seeds} {over}" if n_seeds > 1 else "one seed (no sd)"
    star = ("★ the best of a column only where it beats the runner-up beyond noise (95% "
            "paired bootstrap over test perturbations and seeds; the ceiling excluded; "
            "columns without a bootstrap are never marked)" if "diff" in table.columns
            else "★ best per column (the replicate ceiling excluded)")
    note = (f"Test subset, held-out cells as the truth; {spread}; {star}; n/a: hover for the "
            "reason; hover a value for its difference to the best simple baseline; click a "
            "header to sort."
            + (" Normalised: 0 = the best simple baseline, 1 = the ceiling (what a model that "
               "knew the true effects would score against these test cells)." if has_norm
               else ""))
    notes = _normalised_notes(table, metrics, normalised)
    out = (_table(header, rows, f"leaderboard-{experiment}", tips)
           + f'<p style="font-size:11px;color:#555">{html.escape(note)}</p>')
    if notes:
        out += ('<p style="font-size:11px;color:#555">Normalised scores not shown for '
                + "; ".join(html.escape(n) for n in notes) + ".</p>")
    if has_diff:
        out += _differences_html(table, experiment, len(splits) > 1)
    return out


def _diff_text(r) -> str:
    return f"{float(r['diff']):+.3f} [{float(r['diff_lo']):+.3f}, {float(r['diff_hi']):+.3f}]"


def _normalised_notes(table: pd.DataFrame, metrics: list[str], shown: set) -> list[str]:
    """Why a metric has no normalised column ("not discriminative here", with the numbers);
    metrics and splits with the same reason share one line."""
    if "normalised_note" not in table.columns:
        return []
    by_note: dict[str, list[str]] = {}
    for m in metrics:
        if m in shown or m.endswith("iwelbo"):
            continue
        part = table[(table["metric"] == m) & (table["normalised_note"].astype(str) != "")]
        for split, rows in part.groupby("split", sort=False):
            where = f" ({split})" if table["split"].nunique() > 1 else ""
            by_note.setdefault(rows["normalised_note"].iloc[0], []).append(f"{m}{where}")
    return [f"{', '.join(names)}: {note}" for note, names in by_note.items()]


def _differences_html(table: pd.DataFrame, experiment: str, by_split: bool) -> str:
    """Each model's difference to the best simple baseline, with its 95% interval."""
    part = table[table["diff"].notna()]
    metrics = list(dict.fromkeys(part["metric"]))
    header = (["split"] if by_split else []) + ["model"] + metrics
    rows = []
    for (split, model), rows_of in part.groupby(["split", "model"], sort=False):
        rows_of = rows_of.set_index("metric")
        cells = [(html.escape(split), split, "", "")] if by_split else []
        cells.append((html.escape(model), model, "", ""))
        for m in metrics:
            if m not in rows_of.index:
                cells.append(("—", "", "", ""))
                continue
            r = rows_of.loc[m]
            lo, hi = float(r["diff_lo"]), float(r["diff_hi"])
            sign = -1 if sbmetrics.lower_is_better(m) else 1
            style = (";background:#e6f4ea" if sign * lo > 0 else
                     ";background:#fce8e6" if sign * hi < 0 else "")
            diff, interval = _diff_text(r).split(" ", 1)
            cells.append((f'{diff}<br><span style="font-size:10px;color:#666">{interval}</span>',
                          float(r["diff"]), style, ""))
        rows.append(cells)
    bases = ", ".join(sorted({b for b in part["baseline"].astype(str) if b}))
    return ("<h4>Difference to the best simple baseline</h4>"
            + _table(header, rows, f"differences-{experiment}")
            + '<p style="font-size:11px;color:#555">'
            + html.escape(f"Model minus the best simple baseline of each column ({bases}), "
                          "with its 95% paired bootstrap interval over test perturbations and "
                          "seeds; green: better beyond noise, red: worse beyond noise.")
            + "</p>")


def cost_html(table: pd.DataFrame, experiment: str) -> str:
    if table.empty:
        return "<p>No benchmark files.</p>"
    header = ["model", "step", "jobs", "wall s (mean)", "wall s (total)", "peak MB",
              "steps/s"]
    rows = []
    for _, r in table.iterrows():
        cells = [(html.escape(r["model"]), r["model"], "", ""),
                 (r["step"], r["step"], "", ""), (str(r["jobs"]), r["jobs"], "", "")]
        for c, fmt in (("seconds_mean", "{:.1f}"), ("seconds_total", "{:.1f}"),
                       ("max_rss_mb", "{:.0f}"), ("steps_per_second", "{:.1f}")):
            v = float(r[c])
            cells.append((fmt.format(v) if np.isfinite(v) else "—", v if np.isfinite(v) else "",
                          "", ""))
        rows.append(cells)
    return (_table(header, rows, f"cost-{experiment}")
            + '<p style="font-size:11px;color:#555">Wall seconds and steps/s were measured '
            "while other jobs shared the machine: they reflect its load as much as each "
            "model's speed; time models on an otherwise idle machine before comparing "
            "their speed.</p>")


def provenance_html(record: dict, experiment: str) -> str:
    sw, git = record.get("software", {}), record.get("git", {})
    commit = git.get("commit")
    code = (f"{commit[:12]}{' (dirty: uncommitted changes)' if git.get('dirty') else ''}"
            if commit else git.get("note", "unknown"))
    dev = record.get("device", {})
    items = [("samsbench", sw.get("samsbench")), ("git commit", code),
             ("Python", sw.get("python")), ("torch", sw.get("torch")),
             ("CUDA", sw.get("cuda") or "none (CPU build)"), ("snakemake", sw.get("snakemake")),
             ("device", f"{dev.get('used', '?')} ({dev.get('name', '?')})"),
             ("seeds", ", ".join(str(s) for s in record.get("seeds", [])))]
    items += [(f"sha256 {k}", (v or "missing")[:16] + "…") for k, v in
              record.get("sha256", {}).items()]
    body = "".join(f'<tr><th style="{_CELL};text-align:left;background:#f0f0f0">'
                   f"{html.escape(k)}</th><td style=\"{_CELL};font-family:monospace\">"
                   f"{html.escape(str(v))}</td></tr>" for k, v in items)
    return (f'<table id="provenance-{experiment}" class="samsbench-provenance" '
            f'style="{_STYLE}">{body}</table>'
            f'<p style="font-size:11px;color:#555">Full record with the resolved configuration: '
            f"results/{html.escape(experiment)}/provenance.json and each run's summary.json.</p>")


# The report's home page (Snakemake's template) centres its content in a screen-high box and
# holds the description in a narrow column beside the rule graph: content taller or wider than
# the box is then cut off or pushed away from the top. Align the box to the top left, give the
# description the full width and let the rule graph wrap below it, so the leaderboard is
# readable without a horizontal scroll. Inside the report item's own page these rules match
# nothing.
_WIDEN = ("<style>div.h-screen.overflow-auto.items-center{align-items:flex-start!important;"
          "justify-content:flex-start!important}"
          "div.grow.flex.gap-3.p-3.items-start{flex-wrap:wrap}"
          "div.grow.flex.gap-3.p-3.items-start>div.py-2{flex:1 1 100%;min-width:0}"
          "div.prose.max-w-lg{max-width:none!important}</style>")


def summary_html(experiment: str, board: pd.DataFrame, cost: pd.DataFrame,
                 record: dict) -> str:
    return (f'{_WIDEN}<div class="samsbench-summary" style="max-width:none;overflow-x:auto">'
            f"<h3>Leaderboard: {html.escape(experiment)}</h3>{leaderboard_html(board, experiment)}"
            f"<h3>Cost</h3>{cost_html(cost, experiment)}"
            f"<h3>Provenance</h3>{provenance_html(record, experiment)}</div>")


def build(experiment: str, metrics_path: str, runs: list[dict], benchmark_root: str,
          resolved: dict, dataset_path: str, split_paths: dict, device_name: str,
          outputs: dict, differences_path: str | None = None) -> None:
    """Write leaderboard.tsv, cost.tsv, provenance.json and the HTML summary (``outputs``
    keys: leaderboard, cost, provenance, html)."""
    differences = (pd.read_csv(differences_path, sep="\t")
                   if differences_path and os.path.exists(differences_path) else None)
    board = leaderboard(pd.read_csv(metrics_path, sep="\t"), differences)
    cost = cost_table(runs, benchmark_root)
    seeds = sorted({int(r["seed"]) for r in runs})
    record = experiment_provenance(resolved, dataset_path, split_paths, seeds, device_name)
    sbio.write_tsv(board, outputs["leaderboard"])
    sbio.write_tsv(cost, outputs["cost"])
    sbio.write_json(record, outputs["provenance"])
    page = summary_html(experiment, board, cost, record)
    # a whole document (the report item) whose body is also valid inside the home page
    sbio.write_text('<!DOCTYPE html><html><head><meta charset="utf-8">'
                    f"<title>samsbench {html.escape(experiment)}</title></head><body>{page}"
                    "</body></html>\n", outputs["html"])
