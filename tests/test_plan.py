"""``samsbench plan``: runs x steps from the config and hours from a speed table, checked
against hand-computed numbers on a tiny config (issue 16)."""

import math

import pytest
import yaml

from samsbench import cli
from samsbench import config as sbconfig
from samsbench.stages import plan

CONFIG = {
    "run": ["tiny"],
    "datasets": {"sim": {"source": "simulate"}},
    "splits": {"random": {"kind": "random", "seed": 0}},
    "models": {"sams_vae": {"family": "sams_vae"}, "cpa_vae": {"family": "cpa_vae"},
               "control_mean": {"family": "control_mean"}},
    "experiments": {"tiny": {"dataset": "sim", "splits": ["random"],
                             "models": ["sams_vae", "cpa_vae", "control_mean"],
                             "seeds": [0, 1, 2], "training": {"max_steps": 3600}}},
}
SPEEDS = ("family\tdataset\tdevice\tsteps_per_second\tmeasured_on\tdate\n"
          "sams_vae\tsim\tcpu\t2.0\tbox\t2026-01-01\n"
          "sams_vae\tsim\tcpu\t1.0\told box\t2025-01-01\n"  # older: not used
          "cpa_vae\tsim\tcpu\t4.0\tbox\t2026-01-01\n")


@pytest.fixture
def files(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    (tmp_path / "speed.tsv").write_text(SPEEDS)
    return tmp_path


def test_hours_match_the_hand_computation(files):
    config = sbconfig.load(str(files / "config.yaml"))
    table = plan.load_speed_table(str(files / "speed.tsv"))
    p = plan.experiment_plan(config, "tiny", table, "cpu")
    # 3 models x 1 split x 3 seeds; the baseline takes no gradient steps
    assert p["runs"] == 9 and p["steps"] == 2 * 3 * 3600
    rows = {r["family"]: r for r in p["families"]}
    assert rows["sams_vae"]["device_hours"] == pytest.approx(3 * 3600 / 2.0 / 3600)  # 1.5
    assert rows["cpa_vae"]["device_hours"] == pytest.approx(3 * 3600 / 4.0 / 3600)  # 0.75
    assert rows["control_mean"]["device_hours"] == 0
    # 2 devices, one run each: 2.25 h of work over 2 devices; the longest run is 0.5 h
    assert plan.wall_hours(p, 2, 1)["wall_hours"] == pytest.approx(1.125)
    # 4 runs per device at 2x one run's throughput: each run goes at half speed -> 1.0 h
    est = plan.wall_hours(p, 2, 4, pack_gain=2.0)
    assert est["device_hours"] == pytest.approx(2.25) and est["wall_hours"] == pytest.approx(1.0)
    # 100 devices: bounded by the longest run, not by the total
    assert plan.wall_hours(p, 100, 1)["wall_hours"] == pytest.approx(0.5)


def test_unmeasured_device_is_reported_not_guessed(files, capsys):
    assert cli.main(["plan", "--config", str(files / "config.yaml"), "--run", "tiny",
                     "--gpus", "2", "--pack", "1", "--speed-table", str(files / "speed.tsv")]) == 0
    out = capsys.readouterr().out
    assert "tiny (sim, cuda): 9 runs, 21,600 optimiser steps" in out
    assert "cuda: not measured for sams_vae, cpa_vae" in out
    assert "total 2.2 device-hours" in out and "1.1 h wall" in out
    config = sbconfig.load(str(files / "config.yaml"))
    p = plan.experiment_plan(config, "tiny", plan.load_speed_table(str(files / "speed.tsv")),
                             "cuda")
    assert math.isnan(plan.wall_hours(p, 1, 1)["wall_hours"])


def test_bad_input_names_the_problem(files):
    (files / "bad.tsv").write_text("family\tdataset\tdevice\tsteps_per_second\tmeasured_on\tdate\n"
                                   "sams_vae\tsim\tcpu\t0\tbox\t2026-01-01\n")
    with pytest.raises(ValueError, match="steps_per_second must be positive"):
        plan.load_speed_table(str(files / "bad.tsv"))
    config = sbconfig.load(str(files / "config.yaml"))
    with pytest.raises(ValueError, match="unknown experiment 'nope'"):
        plan.experiment_plan(config, "nope", plan.load_speed_table(str(files / "speed.tsv")), "cpu")
    p = plan.experiment_plan(config, "tiny", plan.load_speed_table(str(files / "speed.tsv")), "cpu")
    with pytest.raises(ValueError, match="--gpus"):
        plan.wall_hours(p, 0, 1)


def test_the_stored_speed_table_loads():
    table = plan.load_speed_table()
    assert len(table) and (table["steps_per_second"] > 0).all()
