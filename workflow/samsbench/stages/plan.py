"""Compute plan of an experiment from measured training speed (``samsbench plan``).

Runs x optimiser steps per family come from the config (grids expanded, budget_scale
applied); steps/s per family, dataset and device come from the speed table stored in the
package (``data/resources/speed_table.tsv``, written by ``bench/speed_table.py``, one row per
measurement with where and when it was taken). Nothing is extrapolated from one device to
another: a device without a measurement is reported as not measured. A row's ``kind`` is
``train`` (one run's steps/s) or ``packed`` (the summed steps/s of ``runs_per_device`` runs
started together on one device); the packed rows give the packing gain.

Arithmetic, per family f: device-hours_f = steps_f / (steps/s_f) / 3600. With G devices and
K runs packed per device (Snakemake job groups, config ``cluster.runs_per_gpu``), K runs share
one device at ``pack_gain`` times one run's throughput (the table's packed rows: summed steps/s
of K runs over that of 1 run in the same series; 1 when not measured for K), so each packed
run goes at gain/K of its own speed, the device-hours of the grid shrink by the gain, and

    wall hours = max(total device-hours / (G x gain), longest run's hours x K / gain).

Evaluation (the model ATE, IWELBO) and data preparation are not counted.
"""

from __future__ import annotations

import math
import os

import pandas as pd

SPEED_TABLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                           "resources", "speed_table.tsv")
COLUMNS = ["family", "dataset", "device", "steps_per_second", "measured_on", "date"]
KINDS = ("train", "packed")


def load_speed_table(path: str | None = None) -> pd.DataFrame:
    path = path or SPEED_TABLE
    if not os.path.exists(path):
        raise FileNotFoundError(f"speed table not found: {path}")
    table = pd.read_csv(path, sep="\t")
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: speed table lacks column(s) {missing}")
    bad = table[~(table["steps_per_second"] > 0)]
    if len(bad):
        raise ValueError(f"{path}: steps_per_second must be positive (row {bad.index[0] + 2})")
    # tables written before packed rows existed: every row is one run's speed
    table["kind"] = table["kind"].fillna("train") if "kind" in table else "train"
    table["runs_per_device"] = (table["runs_per_device"].fillna(1).astype(int)
                                if "runs_per_device" in table else 1)
    bad = table[~table["kind"].isin(KINDS) | (table["runs_per_device"] < 1)]
    if len(bad):
        raise ValueError(f"{path}: kind must be one of {KINDS} and runs_per_device >= 1 "
                         f"(row {bad.index[0] + 2})")
    return table


def speed(table: pd.DataFrame, family: str, dataset: str, device: str) -> dict | None:
    """The latest measurement of a family on a dataset and device, or None."""
    rows = table[(table["family"] == family) & (table["dataset"] == dataset)
                 & (table["device"] == device) & (table["kind"] == "train")]
    if rows.empty:
        return None
    return rows.sort_values("date", kind="stable").iloc[-1].to_dict()


def packing_gain(table: pd.DataFrame, dataset: str, device: str, pack: int) -> dict | None:
    """The measured throughput of ``pack`` runs on one device over one run's: the latest packed
    series (family, dataset, where, date) on ``device`` that has both 1 and ``pack`` runs,
    preferring one on ``dataset``. Returns {"gain", "measured"} or None (1 run needs none)."""
    if pack == 1:
        return None
    rows = table[(table["kind"] == "packed") & (table["device"] == device)]
    series = []
    for key, group in rows.groupby(["family", "dataset", "measured_on", "date"], sort=False):
        by_k = dict(zip(group["runs_per_device"], group["steps_per_second"]))
        if 1 in by_k and pack in by_k:
            series.append((key[1] == dataset, key[3], key, by_k[pack] / by_k[1]))
    if not series:
        return None
    same, date, (family, on, where, when), gain = max(series, key=lambda s: (s[0], s[1]))
    return {"gain": gain, "measured": f"{family} on {on}-shaped data, {where}, {when}"}


def experiment_plan(config: dict, experiment: str, table: pd.DataFrame, device: str) -> dict:
    """Runs, steps and device-hours per family of one experiment on one device."""
    from samsbench import config as sbconfig
    from samsbench import models as registry

    if experiment not in config["experiments"]:
        raise ValueError(f"unknown experiment {experiment!r}; config has "
                         f"{sorted(config['experiments'])}")
    exp = config["experiments"][experiment]
    max_steps = int(exp.get("training", {}).get("max_steps") or 1000)
    dataset = exp["dataset"]
    families: dict[str, dict] = {}
    for run in sbconfig.runs(config, experiment):
        family = run["family"]
        cls = registry.resolve(family)
        steps = max_steps if cls.trains_by_gradient else 0
        row = families.setdefault(family, {"family": family, "runs": 0, "steps": 0})
        row["runs"] += 1
        row["steps"] += steps
    rows, missing = [], []
    for row in families.values():
        measured = speed(table, row["family"], dataset, device) if row["steps"] else None
        if row["steps"] and measured is None:
            missing.append(row["family"])
            row.update(steps_per_second=math.nan, device_hours=math.nan, run_hours=math.nan)
        elif not row["steps"]:
            row.update(steps_per_second=math.nan, device_hours=0.0, run_hours=0.0)
        else:
            sps = float(measured["steps_per_second"])
            row.update(steps_per_second=sps, device_hours=row["steps"] / sps / 3600,
                       run_hours=max_steps / sps / 3600,
                       measured=f"{measured['measured_on']}, {measured['date']}")
        rows.append(row)
    return {"experiment": experiment, "dataset": dataset, "device": device,
            "max_steps": max_steps, "families": rows, "missing": missing,
            "runs": sum(r["runs"] for r in rows), "steps": sum(r["steps"] for r in rows)}


def wall_hours(plan: dict, gpus: int, pack: int, pack_gain: float = 1.0) -> dict:
    if gpus < 1 or pack < 1 or pack_gain <= 0:
        raise ValueError("--gpus and --pack must be >= 1 and the packing gain positive")
    if plan["missing"]:
        return {"device_hours": math.nan, "wall_hours": math.nan}
    total = sum(r["device_hours"] for r in plan["families"])
    longest = max((r["run_hours"] for r in plan["families"]), default=0.0)
    wall = max(total / (gpus * pack_gain), longest * pack / pack_gain)
    return {"device_hours": total, "wall_hours": wall}


def format_plan(plan: dict, gpus: int, pack: int, pack_gain: float = 1.0) -> str:
    lines = [f"{plan['experiment']} ({plan['dataset']}, {plan['device']}): {plan['runs']:,} runs, "
             f"{plan['steps']:,} optimiser steps ({plan['max_steps']:,} per trained run)"]
    lines.append(f"  {'family':22s} {'runs':>6s} {'steps':>14s} {'steps/s':>9s} "
                 f"{'device-h':>10s}  measured")
    for r in plan["families"]:
        sps = "-" if math.isnan(r["steps_per_second"]) else f"{r['steps_per_second']:.2f}"
        hours = ("not measured" if math.isnan(r["device_hours"])
                 else f"{r['device_hours']:.1f}")
        lines.append(f"  {r['family']:22s} {r['runs']:6d} {r['steps']:14,d} {sps:>9s} "
                     f"{hours:>10s}  {r.get('measured', '')}")
    if plan["missing"]:
        measured = sum(r["device_hours"] for r in plan["families"]
                       if not math.isnan(r["device_hours"]))
        lines.append(f"  {plan['device']}: not measured for {', '.join(plan['missing'])} on "
                     f"{plan['dataset']}-shaped data; run `make gpu-check` / "
                     f"bench/speed_table.py --device {plan['device']}")
        if measured:
            lines.append(f"  measured families only: {measured:.1f} device-hours one run per "
                         f"device, {measured / pack_gain:.1f} with {pack} per device (a lower "
                         f"bound: the families above are not counted)")
    else:
        est = wall_hours(plan, gpus, pack, pack_gain)
        lines.append(f"  total {est['device_hours']:.1f} device-hours one run per device; "
                     f"{est['device_hours'] / pack_gain:.1f} with {pack} run(s) per device "
                     f"(packing gain {pack_gain:.2f}x); with {gpus} device(s): "
                     f"{est['wall_hours']:.1f} h wall ({est['wall_hours'] / 24:.1f} days)")
    return "\n".join(lines)


def print_plans(config_path: str | None, experiments=None, gpus: int = 1,
                pack: int | None = None, pack_gain: float | None = None, device: str | None = None,
                speed_table: str | None = None) -> int:
    """Print the plan of each experiment (default: the config's run list) per device, and
    the device-hours of them all. ``pack_gain`` None: the table's measured gain for ``pack``
    runs per device (1 where none is measured)."""
    from samsbench import config as sbconfig

    config = sbconfig.load_or_packaged(config_path)
    table = load_speed_table(speed_table)
    pack = pack or int((config.get("cluster") or {}).get("runs_per_gpu", 1))
    experiments = experiments or list(config["run"]) or list(config["experiments"])
    for dev in [device] if device else ["cuda", "cpu"]:
        totals = {"hours": 0.0, "packed": 0.0, "missing": []}
        for experiment in experiments:
            plan = experiment_plan(config, experiment, table, dev)
            gain, note = pack_gain, ""
            if gain is None:
                measured = packing_gain(table, plan["dataset"], dev, pack)
                gain = measured["gain"] if measured else 1.0
                note = (f"  packing gain {gain:.2f}x for {pack} runs per device: measured with "
                        f"{measured['measured']}" if measured else
                        f"  packing gain for {pack} runs per device: not measured on {dev}; "
                        "1 assumed" if pack > 1 else "")
            print(format_plan(plan, gpus, pack, gain))
            if note:
                print(note)
            hours = [r["device_hours"] for r in plan["families"]]
            totals["hours"] += sum(h for h in hours if not math.isnan(h))
            totals["packed"] += sum(h for h in hours if not math.isnan(h)) / gain
            totals["missing"] += [f"{r['family']} ({experiment})" for r in plan["families"]
                                  if math.isnan(r["device_hours"])]
        if len(experiments) > 1:
            unit = "GPU-hours" if dev == "cuda" else "CPU device-hours"
            print(f"all {len(experiments)} experiments on {dev}: {totals['hours']:.1f} {unit} one "
                  f"run per device, {totals['packed']:.1f} with {pack} per device"
                  + (f"; not counted (not measured): {', '.join(totals['missing'])}"
                     if totals["missing"] else ""))
    return 0
