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
