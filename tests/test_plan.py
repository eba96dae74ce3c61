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


PACKED = ("family\tdataset\tdevice\tsteps_per_second\tkind\truns_per_device\tmeasured_on\tdate\n"
          "sams_vae\tsim\tcuda\t100\ttrain\t1\tgpu\t2026-01-01\n"
          "cpa_vae\tsim\tcuda\t200\ttrain\t1\tgpu\t2026-01-01\n"
          "sams_vae\tsim\tcuda\t90\tpacked\t1\tgpu, packed\t2026-01-01\n"
          "sams_vae\tsim\tcuda\t270\tpacked\t4\tgpu, packed\t2026-01-01\n")


def test_packing_gain_from_the_packed_rows(files, capsys):
    (files / "packed.tsv").write_text(PACKED)
    table = plan.load_speed_table(str(files / "packed.tsv"))
    # the packed rows are not one run's speed
    assert plan.speed(table, "sams_vae", "sim", "cuda")["steps_per_second"] == 100
    assert plan.packing_gain(table, "sim", "cuda", 4)["gain"] == pytest.approx(3.0)  # 270 / 90
    assert plan.packing_gain(table, "sim", "cuda", 2) is None  # not measured: no interpolation
    assert plan.packing_gain(table, "sim", "cuda", 1) is None
    assert cli.main(["plan", "--config", str(files / "config.yaml"), "--run", "tiny", "--device",
                     "cuda", "--pack", "4", "--speed-table", str(files / "packed.tsv")]) == 0
    out = capsys.readouterr().out
    # 3 seeds x 3600 steps: sams 10800 / 100 / 3600 = 0.03 h, cpa 0.015 h; / gain 3 = 0.015 h
    assert "total 0.0 device-hours one run per device; 0.0 with 4 run(s) per device" in out
    assert "packing gain 3.00x for 4 runs per device: measured with sams_vae on sim" in out
    p = plan.experiment_plan(sbconfig.load(str(files / "config.yaml")), "tiny", table, "cuda")
    assert sum(r["device_hours"] for r in p["families"]) == pytest.approx(0.045)
    (files / "bad_kind.tsv").write_text(PACKED.replace("packed\t4", "pack\t4"))
    with pytest.raises(ValueError, match="kind must be one of"):
        plan.load_speed_table(str(files / "bad_kind.tsv"))


def test_the_stored_table_has_the_measured_gpu_rows():
    table = plan.load_speed_table()
    row = plan.speed(table, "sams_vae", "replogle", "cuda")
    assert row["steps_per_second"] == pytest.approx(100.8) and "H200" in row["measured_on"]
    assert plan.packing_gain(table, "replogle", "cuda", 8)["gain"] == pytest.approx(443 / 105)
