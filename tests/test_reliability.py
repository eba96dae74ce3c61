"""Issue 18: no silent wrong benchmark, no code from a checkpoint, downloads that cannot hang
or leave debris. One test (or a few) per numbered item; every bad input comes from
tests/bad_inputs.py."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import bad_inputs as bad
from helpers import for_family, tiny_dataset
from samsbench import cli, inference
from samsbench import config as sbconfig
from samsbench import models as registry
from samsbench.data import contract, memory, splits, tensors
from samsbench.stages import data as data_stage
from samsbench.stages import train as train_stage
from samsbench.data import download as dl
from samsbench.data.contract import ContractError

H5_SHA = hashlib.sha256(bad.H5_BODY).hexdigest()


@pytest.fixture()
def server():
    srv = bad.HttpServer()
    yield srv
    srv.close()


def _fast(**kw):
    return {"retries": 0, "backoff": 0.01, "timeout": 5, **kw}


# -- 1. control label inside a combination; canonical order ----------------------------------

@pytest.mark.parametrize("labels, uns, message", [
    (["non-targeting", "non-targeting+KLF1", "KLF1"], {},
     "label 'non-targeting+KLF1' contains the control label 'non-targeting' as a component; "
     "relabel it 'KLF1'"),
    (["ctrl", "KLF1+ctrl", "KLF1"], {"control_label": "ctrl"},
     "label 'KLF1+ctrl' contains the control label 'ctrl' as a component; relabel it 'KLF1'"),
    (["ctrl", "ctrl+ctrl", "KLF1"], {"control_label": "ctrl"},
     "malformed perturbation label 'ctrl+ctrl': a component is repeated"),
    (["non-targeting", "MAP2K6+KLF1", "KLF1"], {},
     "label 'MAP2K6+KLF1' is not in canonical order: write it 'KLF1+MAP2K6'"),
])
def test_item01_contract_refuses_control_components_and_unsorted_combinations(labels, uns,
                                                                              message):
    with pytest.raises(ContractError) as exc:
        contract.validate(bad.adata(labels=labels, **uns))
    assert message in str(exc.value)


def test_item01_h5ad_prepare_normalises_labels_and_logs(tmp_path, caplog):
    src = bad.gears_style_file(tmp_path / "gears.h5ad")
    out = tmp_path / "prepared.h5ad"
    with caplog.at_level(logging.INFO, logger=data_stage.__name__):
        data_stage.prepare({"source": "h5ad", "path": src}, [src], out)
    assert contract.read(out).obs["perturbation"].tolist() == bad.GEARS_NORMALISED
    # 4 of 8 cells change: KLF1+ctrl, ctrl+ctrl, B+A, ctrl+A+B
    assert "normalised the perturbation label of 4 cells" in caplog.text
    assert "KLF1+ctrl -> KLF1" in caplog.text and "B+A -> A+B" in caplog.text


def test_item01_splits_count_combinations_by_components():
    labels = bad.combination_screen()
    out = splits.make_split(labels, "ood", seed=0, fraction=0.5, control="ctrl")
    is_combo, groups = splits.combination_groups(labels, "ctrl")
    # X+ctrl is a single perturbation: never held out as a combination
    assert set(out[labels == "X+ctrl"]) <= {"train", "val"}
    assert not is_combo[labels == "X+ctrl"].any()
    # A+B and B+A are one combination: 10 combinations, ceil(0.25 * 10) = 3 held out, and no
    # combination has cells on both sides
    test_groups = set(groups[(out == "test") & is_combo])
    train_groups = set(groups[(out == "train") & is_combo])
    assert len(set(groups[is_combo])) == 10 and len(test_groups) == 3
    assert not test_groups & train_groups


# -- 2. implausible counts ---------------------------------------------------------------------

@pytest.mark.parametrize("value, dtype, sparse", [
    (1e12, np.float32, False),
    (1e39, np.float64, False),
    (np.iinfo(np.int64).max, np.int64, False),
    (np.iinfo(np.uint64).max, np.uint64, False),
    (1e12, np.float64, True),
    (2**24 + 1, np.int64, True),
])
def test_item02_counts_above_2_24_are_refused_naming_value_and_cell(value, dtype, sparse):
    with pytest.raises(ContractError) as exc:
        contract.validate(bad.with_count(value, dtype, sparse))
    text = str(exc.value)
    assert f"implausible count {np.asarray(value, dtype=dtype)[()]} at cell c2 (row 2), gene B" \
        in text
    assert "2**24 = 16777216" in text


def test_item02_the_bound_itself_is_a_count_and_the_tensor_cast_guards_too():
    contract.validate(bad.with_count(2**24, np.int64))  # exactly representable: accepted
    with pytest.raises(ContractError, match=r"X holds 999999995904.0 at row 2, column 1"):
        tensors.dense_float32(bad.with_count(1e12, np.float64, sparse=True).X)


# -- 3. labels that are not perturbations ------------------------------------------------------

@pytest.mark.parametrize("make, message", [
    (lambda: bad.adata(labels=["non-targeting", "nan", "KLF1"]),
     "perturbation label 'nan' looks like a missing value"),
    (lambda: bad.adata(labels=["non-targeting", "None", "KLF1"]),
     "perturbation label 'None' looks like a missing value"),
    (lambda: bad.adata(labels=["non-targeting"] * 3),
     "every cell is a control ('non-targeting'): there is no perturbation to learn"),
    (lambda: bad.adata(cell_ids=["c0", "c1", "c1", "c3"]),
     "cell ids (obs_names) are not unique: 1 repeated, e.g. ['c1']"),
    (bad.counts_only_in_layer,
     "X is absent; the contract needs raw counts in X; the file has layers ['counts']: "
     "if one holds the raw counts, move it to X (adata.X = adata.layers['counts'])"),
])
def test_item03_non_perturbation_labels_get_a_clear_error(make, message):
    with pytest.raises(ContractError) as exc:
        contract.validate(make())
    assert message in str(exc.value)


# -- 4. enrichment.tsv gene order --------------------------------------------------------------

def test_item04_enrichment_genes_are_sorted_inside_the_cell(monkeypatch):
    import gseapy

    from samsbench.enrichment import ora as enrich

    class Result:  # gseapy's Genes column in the order it happened to produce
        res2d = pd.DataFrame({"Term": ["S"], "Overlap": ["2/3"], "P-value": [0.01],
                              "Genes": ["PGP;HYI"]})

    monkeypatch.setattr(gseapy, "enrich", lambda **kw: Result())
    out = enrich.ora(["PGP", "HYI"], {"S": {"PGP", "HYI", "X"}}, ["PGP", "HYI", "X", "Y"])
    assert out["genes"].tolist() == ["HYI;PGP"]


# -- 5. a checkpoint cannot run code -----------------------------------------------------------

def test_item05_checkpoint_naming_a_payload_file_is_refused(tmp_path):
    path, family, marker = bad.evil_checkpoint(tmp_path)
    with pytest.raises(ValueError) as exc:
        inference.load_model(path)
    assert f"refusing model family {family!r}" in str(exc.value)
    assert "a checkpoint may only name a registered family" in str(exc.value)
    assert not os.path.exists(marker), "loading a checkpoint ran its payload"
    # A config naming a different plug-in does not make the checkpoint's trusted either.
    with pytest.raises(ValueError, match="is not the configured family 'other.py:Evil'"):
        inference.load_model(path, family="other.py:Evil")
    assert not os.path.exists(marker)
    # The payload is live: resolving it as the user's own (trusted) config would run it.
    registry.resolve(family)
    assert os.path.exists(marker)


def test_item05_plugin_checkpoint_loads_with_the_configs_family(tmp_path):
    plugin = os.path.join(os.path.dirname(__file__), "plugins", "toy_model.py") + ":HalfShift"
    cls = registry.resolve(plugin)  # what training does with the config's family
    state = {"control": torch.tensor([1.0, 2.0]), "means": {"A": torch.tensor([3.0, 4.0])}}
    record = {"family": plugin, "hp": {}, "genes": ["g1", "g2"], "columns": ["A"],
              "encoding": "additive", "baseline_state": state}
    torch.save(record, tmp_path / "model.pt")
    with pytest.raises(ValueError, match="refusing model family"):
        inference.load_model(tmp_path / "model.pt")
    for trusted in (plugin, cls):
        model, _ = inference.load_model(tmp_path / "model.pt", family=trusted)
        assert type(model).__name__ == "HalfShift"
        np.testing.assert_array_equal(model.predict_means(["A"]), [[2.0, 3.0]])


# -- 6. deadline and minimum throughput --------------------------------------------------------

def test_item06_slow_drip_is_dropped_below_the_minimum_rate(server, tmp_path):
    server.routes["/f.h5ad"] = [{"status": 200, "body": bad.H5_BODY, "drip": 0.05}]
    url = server.url("/f.h5ad")
    start = time.monotonic()
    with pytest.raises(dl.DownloadError) as exc:
        dl.download([url], tmp_path / "f.h5ad", min_rate=1000, rate_window=0.5, **_fast())
    assert time.monotonic() - start < 5
    assert "too slow" in str(exc.value) and "below the minimum of 1000 bytes/s" in str(exc.value)
    assert os.listdir(tmp_path) == []


def test_item06_overall_deadline(server, tmp_path):
    server.routes["/f.h5ad"] = [{"status": 200, "body": bad.H5_BODY, "drip": 0.05}]
    url = server.url("/f.h5ad")
    start = time.monotonic()
    with pytest.raises(dl.DownloadError) as exc:
        dl.download([url], tmp_path / "f.h5ad", deadline=1.0, min_rate=0, **_fast())
    assert 0.9 < time.monotonic() - start < 5
    assert "f.h5ad: gave up: the deadline of 1 s for this download passed" in str(exc.value)
    assert os.listdir(tmp_path) == []


# -- 7. stale *.part files ---------------------------------------------------------------------

def test_item07_stale_part_removed_at_start_but_not_one_in_use(server, tmp_path):
    import fcntl

    stale = bad.stale_part(tmp_path, "f.h5ad")
    busy = bad.stale_part(tmp_path, "f.h5ad").replace("k1ll3d", "busy")
    os.rename(bad.stale_part(tmp_path, "f.h5ad"), busy)
    fd = os.open(busy, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another download is writing this one
    try:
        server.routes["/f.h5ad"] = [{"status": 200, "body": bad.H5_BODY}]
        dl.download([server.url("/f.h5ad")], tmp_path / "f.h5ad", sha256=H5_SHA, **_fast())
        assert not os.path.exists(stale)
        assert os.path.exists(busy)
    finally:
        os.close(fd)
    assert sorted(os.listdir(tmp_path)) == sorted(["f.h5ad", os.path.basename(busy)])


DOWNLOAD_SCRIPT = """
import sys
from samsbench.data import download as dl
try:
    dl.download([sys.argv[1]], sys.argv[2], min_rate=0, deadline=60, retries=0)
except dl.DownloadInterrupted as exc:
    print(exc)
    sys.exit(3)
"""


def test_item07_sigterm_removes_the_part_file(server, tmp_path):
    server.routes["/f.h5ad"] = [{"status": 200, "body": bad.H5_BODY, "drip": 0.01}]
    out = tmp_path / "f.h5ad"
    proc = subprocess.Popen([sys.executable, "-c", DOWNLOAD_SCRIPT, server.url("/f.h5ad"),
                             str(out)], stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while not any(p.endswith(".part") for p in os.listdir(tmp_path)) and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=30)
    assert proc.returncode == 3
    assert "interrupted by signal 15; the partial file was removed" in stdout
    assert os.listdir(tmp_path) == []


# -- 8. no trusted sha from an unverified size -------------------------------------------------

def test_item08_body_without_content_length_is_not_recorded(server, tmp_path, caplog):
    tsv = tmp_path / "checksums.tsv"
    cut = bad.H5_BODY[:5000]  # the server closes early and never stated the size
    server.routes["/f.h5ad"] = [{"status": 200, "body": cut, "content_length": None}]
    with caplog.at_level(logging.INFO, logger=dl.__name__):
        dl.download([server.url("/f.h5ad")], tmp_path / "d" / "f.h5ad", checksums_tsv=tsv,
                    **_fast())
    assert dl.read_checksums(tsv) == {}
    sha = hashlib.sha256(cut).hexdigest()
    assert f"did not state its size" in caplog.text
    assert f"sha256 {sha} and size 5000 bytes NOT recorded" in caplog.text
    # With the size stated and matched, the first download is recorded.
    server.routes["/g.h5ad"] = [{"status": 200, "body": bad.H5_BODY}]
    dl.download([server.url("/g.h5ad")], tmp_path / "d" / "g.h5ad", checksums_tsv=tsv,
                **_fast())
    assert dl.read_checksums(tsv)["g.h5ad"]["sha256"] == H5_SHA


# -- 9. a failed re-download keeps the existing file -------------------------------------------

def test_item09_failed_redownload_keeps_the_unverifiable_file(server, tmp_path):
    out = tmp_path / "f.h5ad"
    out.write_bytes(bad.H5_BODY)
    url = server.url("/gone.h5ad")
    with pytest.raises(dl.DownloadError) as exc:
        dl.download([url], out, **_fast())
    assert "HTTP 404" in str(exc.value)
    assert f"the existing {out} was left as it was" in str(exc.value)
    assert out.read_bytes() == bad.H5_BODY
    assert os.listdir(tmp_path) == ["f.h5ad"]
    # a verified new download replaces it
    server.routes["/new.h5ad"] = [{"status": 200, "body": bad.H5_BODY + b"v2"}]
    dl.download([server.url("/new.h5ad")], out, **_fast())
    assert out.read_bytes() == bad.H5_BODY + b"v2"


# -- 10. empty or cut resume.pt ----------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_dataset(str(tmp_path_factory.mktemp("tiny")))


TRAINING = {"max_steps": 20, "batch_size": 64, "val_every": 10, "iwelbo_particles": 10}


def _summary(run_dir):
    import json

    with open(os.path.join(run_dir, "summary.json")) as fh:
        summary = json.load(fh)
    summary.pop("timing")
    return summary


@pytest.mark.parametrize("keep_bytes", [0, 100])
def test_item10_unreadable_resume_starts_afresh(tiny, tmp_path, caplog, keep_bytes):
    hp = {**for_family("sams_vae"), "family": "sams_vae"}
    train_stage.train(*tiny, hp, TRAINING, str(tmp_path / "full"), 0, progress=False)
    broken = tmp_path / "broken"
    broken.mkdir()
    # a finished run removes its resume.pt (issue 25 item 7): a saved state to cut instead
    from samsbench import io as sbio
    sbio.write_pt({"step": 10, "model": {"w": torch.zeros(1000)}}, str(broken / "resume.pt"))
    bad.cut_file(broken / "resume.pt", keep_bytes)
    with caplog.at_level(logging.WARNING, logger=inference.__name__):
        train_stage.train(*tiny, hp, TRAINING, str(broken), 0, progress=False)
    assert f"{broken / 'resume.pt'} is unreadable" in caplog.text
    assert "training starts afresh" in caplog.text
    assert _summary(broken) == _summary(tmp_path / "full")


def test_item10_atomic_save_fsyncs_before_the_rename(tmp_path, monkeypatch):
    from samsbench import io as sbio

    synced = []
    real_fsync = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    path = tmp_path / "resume.pt"
    sbio.write_pt({"step": 3}, str(path))
    assert os.path.basename(synced[0]).startswith(".resume.pt.")  # the data, before the rename
    assert synced[1] == str(tmp_path)  # then the folder entry
    assert torch.load(path, weights_only=True) == {"step": 3}
    assert os.listdir(tmp_path) == ["resume.pt"]


# -- 11. config names, YAML errors, unknown family ---------------------------------------------

@pytest.mark.parametrize("changes, message", [
    ({"models": {"../evil": {"family": "sams_vae"}}},
     "config.yaml: models: the name '../evil' may only contain letters, digits, '_' and '-'"),
    ({"datasets": {"a/b": {"source": "simulate"}}},
     "config.yaml: datasets: the name 'a/b' may only contain"),
    ({"splits": {"..": {"kind": "random"}}},
     "config.yaml: splits: the name '..' may only contain letters, digits, '_', '.' and '-', "
     "not starting with '.'"),
    ({"experiments": {"x y": {"dataset": "sim", "splits": ["random"], "models": ["sams_vae"]}},
      "run": ["x y"]},
     "config.yaml: experiments: the name 'x y' may only contain"),
    ({"models": {"sams_vae": {"family": "sams_vea"}}},
     "config.yaml: models/sams_vae/family: unknown model family 'sams_vea'; known: "),
    ({"models": {"sams_vae": {"family": "missing/plugin.py:Cls"}}},
     "config.yaml: models/sams_vae/family: plug-in file not found: missing/plugin.py"),
])
def test_item11_config_errors_name_the_key(changes, message):
    with pytest.raises(sbconfig.ConfigError) as exc:
        sbconfig.validate(bad.config(**changes))
    assert message in str(exc.value)


def test_item11_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(bad.BROKEN_YAML)
    with pytest.raises(sbconfig.ConfigError) as exc:
        sbconfig.load(str(path))
    assert str(exc.value) == (f"{path}: YAML syntax error at line 5, column 7: "
                              "expected ',' or '}', but got ':'")


def test_item11_snakemake_names_the_line_of_a_broken_config_yaml(tmp_path):
    (tmp_path / "config.yaml").write_text(bad.BROKEN_YAML)
    snakefile = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "Snakefile")
    result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "snakemake"), "-s",
                             snakefile, "-n"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0
    assert ("config.yaml: YAML syntax error at line 5, column 7: expected ',' or '}', but got "
            "':'") in result.stdout + result.stderr


# -- 12. CLI ranges ----------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["train", "--model", "m", "--data", "d", "--splits", "s", "--out", "o", "--max-steps", "0"],
     "argument --max-steps: must be a positive integer (>= 1), got 0"),
    (["train", "--model", "m", "--data", "d", "--splits", "s", "--out", "o",
      "--max-steps", "-5"], "argument --max-steps: must be a positive integer (>= 1), got -5"),
    (["split", "--data", "d", "--out", "o", "--test-fraction", "2"],
     "argument --test-fraction: must lie in [0, 1], got 2"),
    (["split", "--data", "d", "--out", "o", "--fraction", "nan"],
     "argument --fraction: must lie in [0, 1], got nan"),
    (["split", "--data", "d", "--out", "o", "--seed", "-1"],
     "argument --seed: must be an integer >= 0, got -1"),
    (["evaluate", "--run", "r", "--data", "d", "--splits", "s", "--ate-particles", "0"],
     "argument --ate-particles: must be a positive integer (>= 1), got 0"),
    (["simulate", "--out", "o", "--params", "{bad"], "argument --params: not valid JSON"),
    (["download", "--url", "u", "--out", "o", "--timeout", "0"],
     "argument --timeout: must be a number > 0, got 0"),
])
def test_item12_cli_ranges(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


# -- 13. memory pre-flight ---------------------------------------------------------------------

def test_item13_shape_is_read_without_loading_x_and_sizes_mem_mb(tmp_path):
    big = bad.adata(labels=["non-targeting"] * 99_999 + ["KLF1"],
                    X=sp.csr_matrix((100_000, 20_000), dtype=np.float32),
                    genes=[f"g{i}" for i in range(20_000)])
    big.write_h5ad(tmp_path / "sparse.h5ad")
    bad.adata().write_h5ad(tmp_path / "dense.h5ad")
    assert memory.h5ad_shape(tmp_path / "sparse.h5ad") == (100_000, 20_000)
    assert memory.h5ad_shape(tmp_path / "dense.h5ad") == (4, 3)
    # 100000 x 20000 x 4 B = 8 GB dense, x2 + 1 GiB = 17.07 GB -> 17074 MB per attempt
    assert memory.estimate_bytes(100_000, 20_000) == 2 * 8_000_000_000 + 2**30
    assert memory.mem_mb(tmp_path / "sparse.h5ad", attempt=1) == 17074
    assert memory.mem_mb(tmp_path / "sparse.h5ad", attempt=2) == 2 * 17074
    assert memory.mem_mb(tmp_path / "dense.h5ad") == memory.MIN_MEM_MB
    with pytest.raises(FileNotFoundError) as exc:  # Snakemake evaluates it again later
        memory.mem_mb(tmp_path / "absent.h5ad")
    assert exc.value.filename == os.fspath(tmp_path / "absent.h5ad")


def test_item13_preflight_refuses_with_the_estimate_and_the_fix(tiny, monkeypatch, caplog):
    adata = contract.read(tiny[0])
    split = splits.read_split(tiny[1], adata.obs_names)
    need = adata.n_obs * adata.n_vars * 4
    monkeypatch.setattr(memory, "available_bytes", lambda: need - 1)
    with caplog.at_level(logging.INFO, logger=memory.__name__):
        with pytest.raises(MemoryError) as exc:
            tensors.PerturbationData(adata, split)
    assert isinstance(exc.value, memory.InsufficientMemoryError)
    text = str(exc.value)
    assert f"({adata.n_obs} cells x {adata.n_vars} genes x 4 bytes)" in text
    assert f"only {(need - 1) / 1e9:.2f} GB is available" in text
    assert "Fix: give the job more memory" in text
    assert "memory estimate:" in caplog.text  # logged at the start
    monkeypatch.setattr(memory, "available_bytes", lambda: need)
    tensors.PerturbationData(adata, split)  # exactly enough: goes ahead


def test_item13_allocation_failure_becomes_the_same_message(monkeypatch):
    X = sp.csr_matrix(np.ones((4, 3), dtype=np.float32))

    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(np, "empty", no_memory)
    with pytest.raises(memory.InsufficientMemoryError, match=r"\(4 cells x 3 genes x 4 bytes\)"):
        tensors.dense_float32(X)


# ===================================================================================== issue 24
# Round 3: no silently wrong benchmark from a config slip or a mismatched file, no code from a
# results file, no tracebacks for user mistakes, no debris. Items numbered as in issue 24.

import json  # noqa: E402

from samsbench import io as sbio  # noqa: E402
from samsbench.stages import enrich as enrich_stage  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _snakemake_dry_run(cwd, *args):
    return subprocess.run([os.path.join(os.path.dirname(sys.executable), "snakemake"), "-s",
                           os.path.join(REPO, "Snakefile"), "-n", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def _cli(argv, capsys):
    """rc and stderr of ``samsbench argv`` run in this process."""
    rc = cli.main(argv)
    return rc, capsys.readouterr().err


@pytest.fixture(scope="module")
def baseline_run(tiny, tmp_path_factory):
    """A trained additive_mean run of the tiny dataset (seconds: no optimiser steps)."""
    out = str(tmp_path_factory.mktemp("run"))
    train_stage.train(*tiny, {"family": "additive_mean"}, TRAINING, out, 0, progress=False)
    return out


# -- 1. a split or model listed twice ---------------------------------------------------------

@pytest.mark.parametrize("key, items", [("splits", ["random", "random"]),
                                        ("models", ["sams_vae", "sams_vae"]),
                                        ("seeds", [0, 1, 0])])
def test_r24_item01_repeated_entries_are_refused(key, items):
    experiment = {"dataset": "sim", "splits": ["random"], "models": ["sams_vae"], key: items}
    with pytest.raises(sbconfig.ConfigError) as exc:
        sbconfig.validate(bad.config(experiments={"tiny": experiment}))
    assert str(exc.value) == (f"config.yaml: experiments/tiny/{key}: {items[0]!r} is listed "
                              "twice; remove the repeat (each entry runs once; a repeat would "
                              "count it twice)")


# -- 2. a key written twice ------------------------------------------------------------------

@pytest.mark.parametrize("text, key, lines", [(bad.DUPLICATE_TOP_KEY_YAML, "models", (3, 7)),
                                              (bad.DUPLICATE_NESTED_KEY_YAML, "sams_vae", (2, 4))])
def test_r24_item02_duplicate_yaml_keys_name_both_lines(tmp_path, text, key, lines):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(sbconfig.ConfigError) as exc:
        sbconfig.read_yaml(str(path))
    assert str(exc.value) == (f"{path}: key {key!r} is written twice, at lines {lines[0]} and "
                              f"{lines[1]}; YAML would keep only the second: remove or merge one")


def test_r24_item02_snakemake_refuses_a_duplicate_key_in_a_configfile(tmp_path):
    (tmp_path / "extra.yaml").write_text(bad.DUPLICATE_TOP_KEY_YAML)
    result = _snakemake_dry_run(tmp_path, "--configfile", "extra.yaml")
    assert result.returncode != 0
    assert ("extra.yaml: key 'models' is written twice, at lines 3 and 7"
            in result.stdout + result.stderr)


# -- 3. evaluate / export with another dataset or split file ---------------------------------

@pytest.mark.parametrize("verb", ["evaluate", "export"])
@pytest.mark.parametrize("which", ["dataset", "split"])
def test_r24_item03_inputs_other_than_the_runs_are_refused(tiny, baseline_run, tmp_path, verb,
                                                           which, capsys):
    data, split = tiny
    if which == "dataset":
        data = bad.other_dataset(data, tmp_path / "other.h5ad")
    else:
        split = bad.moved_split(split, tmp_path / "other.tsv")
    before = sorted(os.listdir(baseline_run))
    argv = [verb, "--run", baseline_run, "--data", data, "--splits", split]
    if verb == "export":
        argv += ["--out", str(tmp_path / "export")]
    rc, err = _cli(argv, capsys)
    option, path = ("--data", data) if which == "dataset" else ("--splits", split)
    assert rc == 2
    assert err.strip() == (f"samsbench {verb}: error: {option} {path} is not the {which} file "
                           f"this run was trained on (sha256 differs from "
                           f"{sbio.run_file(baseline_run, 'summary')}); give the run's own "
                           f"{which} file")
    assert sorted(os.listdir(baseline_run)) == before  # metrics.tsv not (over)written
    assert not os.path.exists(tmp_path / "export")


def test_r24_item03_the_runs_own_inputs_evaluate(tiny, baseline_run, tmp_path, capsys):
    out = tmp_path / "metrics.tsv"
    rc, err = _cli(["evaluate", "--run", baseline_run, "--data", tiny[0], "--splits", tiny[1],
                    "--out", str(out), "--predictions", str(tmp_path / "p.h5ad")], capsys)
    assert rc == 0, err
    assert set(pd.read_csv(out, sep="\t")["family"]) == {"additive_mean"}


# -- 4. enrichment of a model the experiment does not train ----------------------------------

def test_r24_item04_enrichment_models_must_be_the_experiments():
    experiment = {"dataset": "sim", "splits": ["random"], "models": ["sams_vae"],
                  "enrichment": {"models": ["nosuch"]}}
    with pytest.raises(sbconfig.ConfigError) as exc:
        sbconfig.validate(bad.config(experiments={"tiny": experiment}))
    assert str(exc.value) == ("config.yaml: experiments/tiny/enrichment/models: 'nosuch' is not "
                              "a model of this experiment; its models: sams_vae")


# -- 5. a body longer than its Content-Length ------------------------------------------------

def test_r24_item05_body_past_the_stated_length_is_not_trusted(server, tmp_path, caplog):
    tsv = tmp_path / "checksums.tsv"
    stated = len(bad.H5_BODY) - 1000
    server.routes["/f.h5ad"] = [{"status": 200, "body": bad.H5_BODY, "content_length": stated}]
    out = tmp_path / "d" / "f.h5ad"
    with caplog.at_level(logging.INFO, logger=dl.__name__):
        dl.download([server.url("/f.h5ad")], out, checksums_tsv=tsv, **_fast())
    assert dl.read_checksums(tsv) == {}  # nothing pinned as trusted
    assert out.read_bytes() == bad.H5_BODY  # the whole body, not the stated part
    assert (f"the server stated {stated} bytes (Content-Length) but sent {len(bad.H5_BODY)}"
            in caplog.text)
    assert "NOT recorded" in caplog.text
    # a later good download is not refused
    server.routes["/g.h5ad"] = [{"status": 200, "body": bad.H5_BODY}]
    dl.download([server.url("/g.h5ad")], tmp_path / "d" / "g.h5ad", checksums_tsv=tsv,
                **_fast())
    assert dl.read_checksums(tsv)["g.h5ad"]["sha256"] == H5_SHA


# -- 6. a results folder cannot choose code to run -------------------------------------------

def test_r24_item06_evaluate_does_not_import_a_plugin_named_by_summary(tmp_path, capsys):
    run, marker = bad.run_folder_naming_plugin(tmp_path)
    family = sbio.read_summary(run)["family"]
    rc, err = _cli(["evaluate", "--run", run, "--data", "d.h5ad", "--splits", "s.tsv"], capsys)
    assert rc == 2
    assert err.strip() == (f"samsbench evaluate: error: {run}: summary.json names the plug-in "
                           f"family {family!r}, which is not imported on a results folder's "
                           f"word; if it is your plug-in, pass --family {family} (as in your "
                           "config)")
    assert not os.path.exists(marker)


# -- 7. a pickle bomb as model.pt ------------------------------------------------------------

def test_r24_item07_pickle_bomb_names_the_file_and_no_unsafe_advice(tmp_path, capsys):
    path, marker = bad.pickle_bomb(tmp_path)
    with pytest.raises(ValueError) as exc:
        inference.load_model(path)
    text = str(exc.value)
    assert text == (f"{path}: not a samsbench checkpoint: it holds Python objects that a "
                    "checkpoint never contains, so it was refused without running anything; "
                    "use the model.pt that samsbench train wrote")
    assert "weights_only" not in text
    assert not os.path.exists(marker)
    rc, err = _cli(["export", "--run", str(tmp_path), "--data", "d", "--splits", "s",
                    "--out", str(tmp_path / "x")], capsys)
    assert rc == 2 and "weights_only" not in err and "Traceback" not in err
    assert not os.path.exists(marker)


# -- 8. --set against the schema and the typed hyperparameters, before data ------------------

@pytest.mark.parametrize("setting, message", [
    ("max_steps=1e3", "--set max_steps=1e3: '1e3' is not of type 'integer'; write a whole "
                      "number, e.g. max_steps=1000"),
    ("max_steps=0", "--set max_steps=0: 0 is less than the minimum of 1"),
    ("batch_size=0", "--set batch_size=0: 0 is less than the minimum of 1"),
    ("lr=fast", "--set lr=fast: 'fast' is not of type 'number'"),
    ("n_latent=0", "--set n_latent=0: 0 is less than the minimum of 1"),
    ("n_latent=2.5", "--set n_latent=2.5: 2.5 is not of type 'integer'"),
    ("likelihood=gauss", "--set likelihood=gauss: 'gauss' is not one of"),
])
def test_r24_item08_set_values_are_validated(setting, message, capsys):
    with pytest.raises(sbconfig.ConfigError) as exc:
        sbconfig.resolve_training_run(sbconfig.packaged_defaults(), None, "sams_vae", [setting])
    assert str(exc.value).startswith(message)
    # the command line refuses it before reading the (absent) data
    rc, err = _cli(["train", "--model", "sams_vae", "--data", "absent.h5ad", "--splits",
                    "absent.tsv", "--out", "never", "--set", setting], capsys)
    assert rc == 2 and f"samsbench train: error: {message}" in err
    assert not os.path.exists("never")


def test_r24_item08_valid_set_values_apply():
    hp, training = sbconfig.resolve_training_run(sbconfig.packaged_defaults(), None, "sams_vae",
                                                 ["max_steps=7", "n_latent=3", "lr=1.0e-3"])
    assert training["max_steps"] == 7 and training["lr"] == 1e-3 and hp["n_latent"] == 3


# -- 9. a misspelt simulate argument ---------------------------------------------------------

@pytest.mark.parametrize("source, key, message", [
    ("simulate", "n_gene", "unknown argument 'n_gene' (did you mean 'n_genes'?)"),
    ("reference_sim", "noise_frac",
     "unknown argument 'noise_frac' (did you mean 'noise_fraction'?)"),
])
def test_r24_item09_simulate_block_keys_are_checked(source, key, message):
    with pytest.raises(sbconfig.ConfigError) as exc:
        sbconfig.validate(bad.config(datasets={"sim": {"source": source,
                                                       "simulate": {key: 10}}}))
    assert str(exc.value).startswith(f"config.yaml: datasets/sim/simulate: {message}; known: ")
    sbconfig.validate(bad.config(datasets={"sim": {"source": "simulate",
                                                   "simulate": {"n_genes": 10}}}))


# -- 10. a gene-set file that does not exist -------------------------------------------------

def _config_with_gene_set(path):
    experiment = {"dataset": "sim", "splits": ["random"], "models": ["sams_vae"],
                  "enrichment": {"gene_sets": ["mine"]}}
    return bad.config(gene_sets={"mine": {"source": "path", "path": path}},
                      experiments={"tiny": experiment})


def test_r24_item10_missing_gene_set_file_is_found_before_training(tmp_path):
    missing = str(tmp_path / "missing.gmt")
    config = sbconfig.validate(_config_with_gene_set(missing))
    with pytest.raises(ValueError) as exc:
        enrich_stage.check_library_files(config, ["tiny"])
    assert str(exc.value) == (f"config.yaml: gene_sets/mine/path: file not found: {missing} "
                              "(experiment tiny tests it); fix the path or drop the library "
                              "from enrichment.gene_sets")
    (tmp_path / "missing.gmt").write_text("S\t\tA\tB\n")
    enrich_stage.check_library_files(config, ["tiny"])


@pytest.mark.slow  # ~12 s: Snakemake parses the whole workflow before the check
def test_r24_item10_snakemake_dry_run_names_the_missing_gene_set(tmp_path):
    import yaml

    (tmp_path / "config.yaml").write_text(yaml.safe_dump(_config_with_gene_set("nope.gmt")))
    result = _snakemake_dry_run(tmp_path)
    assert result.returncode != 0
    assert "config.yaml: gene_sets/mine/path: file not found: nope.gmt" in (result.stdout
                                                                           + result.stderr)
    assert not os.path.exists(tmp_path / "results")


# -- 11. no traceback for a user's mistake ---------------------------------------------------

def test_r24_item11_export_out_at_an_existing_file(baseline_run, tiny, tmp_path, capsys):
    out = tmp_path / "taken"
    out.write_text("mine")
    rc, err = _cli(["export", "--run", baseline_run, "--data", tiny[0], "--splits", tiny[1],
                    "--out", str(out)], capsys)
    assert rc == 2
    assert err.strip() == (f"samsbench export: error: --out {out} is an existing file; the "
                           "export writes a folder (predicted.h5ad, real.h5ad): give a folder "
                           "path")
    assert out.read_text() == "mine"


def test_r24_item11_empty_model_pt(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"")
    with pytest.raises(ValueError) as exc:
        inference.load_model(str(tmp_path / "model.pt"))
    assert str(exc.value) == (f"{tmp_path / 'model.pt'}: the file is empty, not a samsbench "
                              "checkpoint; train the run again (samsbench train) or give the "
                              "model.pt it wrote")


def test_r24_item11_ctrl_c_and_memory_refusal_are_one_line(tiny, tmp_path, monkeypatch,
                                                             capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_stage, "train", interrupted)
    argv = ["train", "--model", "additive_mean", "--data", tiny[0], "--splits", tiny[1],
            "--out", str(tmp_path / "run")]
    rc, err = _cli(argv, capsys)
    assert rc == 130
    assert err.splitlines()[-1] == ("samsbench train: interrupted (Ctrl-C); no output was "
                                    "half-written; run the same command again to resume from "
                                    "the last checkpoint")
    monkeypatch.undo()
    monkeypatch.setattr(memory, "available_bytes", lambda: 10)
    rc, err = _cli(argv, capsys)
    assert rc == 2 and "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("samsbench train: error: ") and "Fix: give the job more memory" in last


def test_r24_item11_our_own_bug_keeps_its_traceback(monkeypatch, capsys):
    def bug(*args, **kwargs):
        raise KeyError("oops")

    monkeypatch.setattr(cli, "_split", bug)
    monkeypatch.setattr(cli, "build_parser", _parser_with(cli.build_parser, "split", bug))
    rc, err = _cli(["split", "--data", "d", "--out", "o"], capsys)
    assert rc == 1
    assert "Traceback" in err and "KeyError: 'oops'" in err
    assert "this is a bug in samsbench, not a mistake of yours; please report it" in err


def _parser_with(build, verb, func):
    def patched():
        parser = build()
        for action in parser._subparsers._group_actions:
            action.choices[verb].set_defaults(func=func)
        return parser

    return patched


def test_r24_item11_ctrl_c_of_download_is_one_line(server, tmp_path):
    server.routes["/f.h5ad"] = [{"status": 200, "body": bad.H5_BODY, "drip": 0.01}]
    proc = subprocess.Popen([sys.executable, "-m", "samsbench", "download", "--url",
                             server.url("/f.h5ad"), "--out", str(tmp_path / "f.h5ad"),
                             "--retries", "0"], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not any(p.endswith(".part") for p in os.listdir(tmp_path)) and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in err
    assert err.splitlines()[-1] == ("samsbench download: interrupted (Ctrl-C); no output was "
                                    "half-written")
    assert os.listdir(tmp_path) == []


# -- 12. an empty gene name ------------------------------------------------------------------

@pytest.mark.parametrize("genes", [["A", "", "C"], ["A", "B", "  "]])
def test_r24_item12_empty_gene_names_are_refused(genes):
    with pytest.raises(ContractError) as exc:
        contract.validate(bad.adata(genes=genes))
    column = [g.strip() for g in genes].index("")
    assert str(exc.value) == (f"gene name (var_names) at column {column} is empty (1 empty in "
                              "all); give every gene a name")


# -- 13. temporary files of a killed writer --------------------------------------------------

def test_r24_item13_next_train_removes_a_killed_writers_temp_files(tiny, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    stale = [bad.stale_temp(run, "resume.pt"), bad.stale_temp(run, "model.pt")]
    busy = bad.stale_temp(run, "metrics.tsv", pid=os.getpid())  # a writer that still runs
    train_stage.train(*tiny, {"family": "additive_mean"}, TRAINING, str(run), 0, progress=False)
    assert not any(os.path.exists(p) for p in stale)
    assert os.path.exists(busy)
    assert sorted(p for p in os.listdir(run) if ".tmp" in p) == [os.path.basename(busy)]


def test_r24_item13_download_and_writer_share_one_mechanism(tmp_path):
    part = bad.stale_part(tmp_path, "f.h5ad")
    temp = bad.stale_temp(tmp_path, "f.h5ad")
    assert dl.remove_stale_parts(tmp_path, "f.h5ad") == [part]  # only the download's own
    assert sbio.remove_stale(tmp_path) == [temp]


# -- 14. byte-identical checkpoints ----------------------------------------------------------

def test_r24_item14_two_identical_runs_write_identical_model_pt(tiny, tmp_path):
    for name in ("a", "b"):
        train_stage.train(*tiny, {"family": "additive_mean"}, TRAINING, str(tmp_path / name), 0,
                          progress=False)
    a, b = ((tmp_path / n / "model.pt").read_bytes() for n in "ab")
    assert a == b
    # the file name is not in the bytes either (torch.save to a path would store it)
    state = {"w": torch.arange(3.0)}
    sbio.write_pt(state, tmp_path / "x.pt")
    sbio.write_pt(state, tmp_path / "y.pt")
    assert (tmp_path / "x.pt").read_bytes() == (tmp_path / "y.pt").read_bytes()


# -- 15. one train per run folder; jobs stop with Snakemake ----------------------------------

def test_r24_item15_a_second_train_into_the_same_folder_is_refused(tiny, tmp_path, capsys):
    run = str(tmp_path / "run")
    with sbio.folder_lock(run, "samsbench train"):  # the first train, still running
        with pytest.raises(RuntimeError) as exc:
            train_stage.train(*tiny, {"family": "additive_mean"}, TRAINING, run, 0,
                              progress=False)
        rc, err = _cli(["train", "--model", "additive_mean", "--data", tiny[0], "--splits",
                        tiny[1], "--out", run], capsys)
    message = (f"{run} is in use by another samsbench train (it holds "
               f"{os.path.join(run, '.samsbench.lock')}); wait for it to finish, or give "
               "another --out")
    assert str(exc.value) == message
    assert rc == 2 and err.splitlines()[-1] == f"samsbench train: error: {message}"
    assert os.listdir(run) == [".samsbench.lock"]  # nothing else written
    train_stage.train(*tiny, {"family": "additive_mean"}, TRAINING, run, 0, progress=False)


WATCHED_JOB = """
import sys, time
sys.path.insert(0, sys.argv[1])
import _log
_log.watch_snakemake(interval=0.05)
print("watching", flush=True)
time.sleep(120)
"""


def test_r24_item15_a_job_stops_when_snakemake_is_killed():
    snakemake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    env = {**os.environ, "SAMSBENCH_SNAKEMAKE_PID": str(snakemake.pid)}
    job = subprocess.Popen([sys.executable, "-c", WATCHED_JOB,
                            os.path.join(REPO, "workflow", "scripts")], env=env,
                           stdout=subprocess.PIPE, text=True)
    try:
        assert job.stdout.readline().strip() == "watching"
        assert job.poll() is None  # Snakemake alive: the job goes on
        snakemake.kill()
        snakemake.wait()
        assert job.wait(timeout=60) == -signal.SIGTERM  # training saves resume.pt on SIGTERM
    finally:
        for proc in (job, snakemake):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
