"""The shared engine: ELBO reweighting, IWELBO, training determinism and resumption."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import for_family, tiny_dataset
from samsbench import inference
from samsbench.stages import train as train_stage
from samsbench import models as registry

# Read from the registry, so that a new family is tested without editing this file.
FAMILIES = [f for f, cls in registry.FAMILIES.items() if cls.trains_by_gradient]
SUBSET_FAMILIES = [f for f in FAMILIES if registry.FAMILIES[f].samples_column_subsets]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_dataset(str(tmp_path_factory.mktemp("tiny")))


def build(family, data):
    torch.manual_seed(0)
    return registry.build(family, len(data.genes), data.columns, for_family(family))


def encoding(family):
    return registry.hyperparameters(family).encoding  # svae_plus: unique


def test_global_terms_count_once_per_perturbation_and_skip_control(tiny):
    data = train_stage.load_data(*tiny)
    model = build("sams_vae", data)
    T = len(data.columns)
    constant = torch.arange(1.0, T + 1)  # a known global log p - log q per perturbation
    sample = model.sample_globals

    def known_ratio(P, columns=None):
        ratio = constant if columns is None else constant[columns]
        return sample(P, columns)[0], ratio.expand(P, -1)

    model.sample_globals = known_ratio
    rows = data.split_index("train")
    x, dose = data.X[rows], data.dosage(data.codes[rows])
    inv = inference.inverse_counts(data.dose_counts("train"))
    torch.manual_seed(1)
    with_g = inference.particle_elbo(model, x, dose, inv, 2)
    torch.manual_seed(1)
    without = inference.particle_elbo(model, x, dose, inv, 2, with_globals=False)
    charged = (with_g - without).detach()
    # Summed over the split, every observed perturbation's term counts exactly once.
    observed = data.dose_counts("train") > 0
    assert charged.sum(1)[0].item() == pytest.approx(constant[observed].sum().item(), rel=1e-5)
    # The named part: the global "KL" per cell is minus that sum over the cells; the parts add
    # up to the loss.
    torch.manual_seed(1)
    out = inference.minibatch_loss(model, x, dose, inv, 2)
    assert out.kl_global.item() * len(rows) == pytest.approx(-constant[observed].sum().item(),
                                                             rel=1e-5)
    assert out.loss.item() == pytest.approx(-with_g.mean().item(), rel=1e-6)
    parts = out.reconstruction + out.kl_local + out.kl_global
    assert parts.item() == pytest.approx(out.loss.item(), rel=1e-5)
    # The weights sum to one per perturbation; control cells carry no global term.
    W = (dose.dense != 0).float() * inv
    torch.testing.assert_close(W.sum(0)[observed], torch.ones(int(observed.sum())))
    control = torch.from_numpy(data.labels[rows.numpy()] == data.control)
    assert torch.all(charged[:, control] == 0)


@pytest.mark.parametrize("family", SUBSET_FAMILIES)
def test_minibatch_elbo_over_its_own_perturbations_equals_the_full_one(tiny, family):
    # Training samples the globals of only the perturbations in the minibatch (with the values
    # the full draw gives them); loss and every gradient must be those of the full draw.
    data = train_stage.load_data(*tiny)
    model = build(family, data)
    train = data.split_index("train")
    rows = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:12]]
    x, dose = data.X[rows], data.dosage(data.codes[rows])
    assert 0 < len(dose.present_columns()) < len(data.columns)
    assert (data.codes[rows] < len(data.columns)).sum(1).max() == 2  # a combination is in it
    inv = inference.inverse_counts(data.dose_counts("train"))

    def loss_and_grads():
        model.zero_grad()
        torch.manual_seed(5)
        loss = -inference.particle_elbo(model, x, dose, inv, 3).mean()
        loss.backward()
        return [loss] + [p.grad if p.grad is not None else torch.zeros_like(p)
                         for p in model.parameters()]

    subset = loss_and_grads()
    model.samples_column_subsets = False
    full = loss_and_grads()
    assert subset[0].item() != 0
    for a, b in zip(subset, full):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_iwelbo_equals_local_elbo_at_one_particle_and_bounds_it(tiny, family):
    data = train_stage.load_data(*tiny, encoding=encoding(family))
    model = build(family, data)
    mean, std = data.input_statistics(model.normalization)
    model.set_input_statistics(mean, std)
    one = inference.iwelbo(model, data, "val", n_particles=1, seed=3)
    torch.manual_seed(3)
    globals_ = model.sample_globals(1)
    rows = data.split_index("val")
    with torch.no_grad():
        elbo = inference.particle_elbo(model, data.X[rows], data.dosage(data.codes[rows]), None, 1,
                                       globals_, with_globals=False)
    assert one == pytest.approx(elbo.mean().item(), rel=1e-6)
    # Jensen: the 50-particle bound is above the average single-particle bound.
    singles = [inference.iwelbo(model, data, "val", n_particles=1, seed=s) for s in range(10)]
    assert inference.iwelbo(model, data, "val", n_particles=50, seed=0) > np.mean(singles)


def test_svae_plus_rejects_multi_hot_dosages(tiny, tmp_path):
    data_path, split_path = tiny
    hp = {**for_family("svae_plus"), "family": "svae_plus", "encoding": "additive"}
    with pytest.raises(ValueError, match="one-hot"):
        train_stage.train(data_path, split_path, hp, {"max_steps": 2}, str(tmp_path / "run"), 0,
                        progress=False)


def test_non_finite_loss_stops_with_a_clear_error(tiny, tmp_path):
    data_path, split_path = tiny
    hp = {**for_family("cpa_vae"), "family": "cpa_vae"}
    with pytest.raises(FloatingPointError, match="non-finite (training|validation) loss"):
        train_stage.train(data_path, split_path, hp, {"max_steps": 50, "lr": 1e30},
                        str(tmp_path / "run"), 0, progress=False)


def _numbers(run_dir):
    with open(os.path.join(run_dir, "summary.json")) as fh:
        summary = json.load(fh)
    summary.pop("timing")
    return summary


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_numbers(tiny, tmp_path, family):
    data_path, split_path = tiny
    hp = {**for_family(family), "family": family}
    training = {"max_steps": 30, "batch_size": 64, "val_every": 10, "iwelbo_particles": 10}
    for name in ("a", "b"):
        train_stage.train(data_path, split_path, hp, training, str(tmp_path / name), 0, progress=False)
    assert _numbers(tmp_path / "a") == _numbers(tmp_path / "b")
    assert math.isfinite(_numbers(tmp_path / "a")["val_iwelbo"])
    # the loss and its named parts at each validation; the parts add up to the loss
    history = pd.read_csv(tmp_path / "a" / "history.tsv", sep="\t")
    assert list(history["step"]) == [10, 20, 30]
    for split in ("train", "val"):
        parts = sum(history[f"{split}_{k}"] for k in inference.LOSS_PARTS)
        np.testing.assert_allclose(parts, history[f"{split}_loss"], rtol=1e-5)
    has_globals = bool(registry.FAMILIES[family].global_variables)
    assert (history["val_kl_global"] != 0).all() == has_globals


TRAIN_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from samsbench.stages import train as train_stage
hp = dict(n_latent=6, n_layers=1, encoder_n_hidden=16, decoder_n_hidden=16,
          embedding_encoder_n_layers=2, embedding_encoder_n_hidden=8, mask_prior_prob=0.2,
          family="sams_vae")
train_stage.train(sys.argv[1], sys.argv[2], hp,
                {"max_steps": int(sys.argv[4]), "batch_size": 32, "val_every": 20,
                 "checkpoint_every": 5, "iwelbo_particles": 10},
                sys.argv[3], 0, progress=False)
"""


STEPS = "400"


@pytest.fixture(scope="module")
def uninterrupted(tiny, tmp_path_factory):
    directory = tmp_path_factory.mktemp("uninterrupted")
    script = directory / "train.py"
    script.write_text(TRAIN_SCRIPT)
    subprocess.run([sys.executable, str(script), *tiny, str(directory / "run"), STEPS], check=True)
    return script, directory / "run"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_run_resumes_to_the_same_numbers(tiny, uninterrupted, tmp_path, sig):
    data_path, split_path = tiny
    script, full = uninterrupted
    steps = STEPS
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), data_path, split_path, str(killed), steps])
    deadline = time.time() + 120
    while not (killed / "resume.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    assert proc.wait(60) != 0, "the run finished before it could be killed"
    assert not (killed / "summary.json").exists()
    resumed_from = torch.load(killed / "resume.pt", weights_only=True)["step"]
    assert 0 < resumed_from < int(steps)
    subprocess.run([sys.executable, str(script), data_path, split_path, str(killed), steps], check=True)
    assert _numbers(killed) == _numbers(full)
    assert (killed / "history.tsv").read_text().splitlines()[1:] != []


# -- the compiled step (training.compile, issue 21) ------------------------------------------

def _history_losses(run_dir):
    return pd.read_csv(os.path.join(run_dir, "history.tsv"), sep="\t")["train_loss"].to_numpy()


def _train_tiny(tiny, run_dir, family="sams_vae", **training):
    hp = for_family(family)
    data = train_stage.load_data(*tiny, encoding(family))
    model = build(family, data)
    settings = {"max_steps": 12, "val_every": 1, "batch_size": 32, **training}
    return inference.train(model, family, registry.hyperparameters(family, hp), data, settings,
                           str(run_dir), 0, progress=False)


@pytest.mark.slow
def test_compiled_step_follows_the_eager_loss_trajectory(tiny, tmp_path, monkeypatch):
    """``compile: on`` on the CPU (inductor's C++ kernels; about a minute to compile on two
    cores): the per-step training losses match the eager step's. inductor draws its own random
    numbers unless told to use torch's (``fallback_random``), so with it the two paths see the
    same noise and differ only by float rounding in the fused kernels."""
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config, "fallback_random", True)
    _train_tiny(tiny, tmp_path / "eager", compile="off")
    _train_tiny(tiny, tmp_path / "compiled", compile="on")
    eager, compiled = _history_losses(tmp_path / "eager"), _history_losses(tmp_path / "compiled")
    assert len(compiled) == 12
    np.testing.assert_allclose(compiled, eager, rtol=1e-4)


def test_compile_setting():
    assert not inference.use_compile("auto", "cpu") and inference.use_compile("auto", "cuda")
    assert inference.use_compile("on", "cpu") and not inference.use_compile("off", "cuda")
    assert inference.use_compile(True, "cpu") and not inference.use_compile(False, "cuda")
    with pytest.raises(ValueError, match="training.compile must be one of"):
        inference.use_compile("yes", "cpu")


def test_auto_compile_leaves_the_cpu_step_eager(tiny, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.compile called on the CPU with compile: auto")

    monkeypatch.setattr(torch, "compile", refuse)
    _train_tiny(tiny, tmp_path / "run", max_steps=3)


def test_a_step_that_fails_to_compile_runs_eagerly_or_says_so(tiny, tmp_path, monkeypatch,
                                                              caplog):
    def broken_compile(fn, **kwargs):
        def compiled(*args):
            raise RuntimeError("no C++ compiler")
        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    data = train_stage.load_data(*tiny)
    inv = inference.inverse_counts(data.dose_counts("train"))
    rows = data.split_index("train")[:32]
    parts = {}
    for name, compiled in (("eager", False), ("fallback", True)):
        model = build("sams_vae", data)
        model.set_input_statistics(*data.input_statistics(model.normalization))
        optim = inference.make_optimizer(model, 1e-3, 0.0)
        step = inference.make_step(model, data, inv, 3, None, compiled=compiled)
        torch.manual_seed(0)
        parts[name] = step(rows, optim)
    assert "compiling the training step failed (RuntimeError: no C++ compiler)" in caplog.text
    torch.testing.assert_close(parts["fallback"], parts["eager"])
    step = inference.make_step(model, data, inv, 3, None, compiled=True, strict=True)
    with pytest.raises(RuntimeError, match="set training.compile: off"):
        step(rows, optim)


# -- checkpoint traffic (issue 25 item 7) ----------------------------------------------------

def _count_resume_writes(monkeypatch):
    from samsbench import io as sbio

    writes = []
    original = sbio.write_pt

    def counted(obj, path, *args, **kwargs):
        if os.path.basename(str(path)) == "resume.pt":
            writes.append(obj["step"])
        return original(obj, path, *args, **kwargs)

    monkeypatch.setattr(sbio, "write_pt", counted)
    return writes


def test_resume_is_written_on_a_time_budget_and_removed_at_the_end(tiny, tmp_path, monkeypatch):
    """40 steps of 64 cells: about 10 epochs. By default resume.pt was written at every
    validation (once per epoch); now at most every checkpoint_minutes, and once at the last
    step, and the finished run keeps no resume.pt."""
    writes = _count_resume_writes(monkeypatch)
    run_dir = tmp_path / "run"
    _train_tiny(tiny, run_dir, max_steps=40, batch_size=64, val_every=None)
    history = pd.read_csv(run_dir / "history.tsv", sep="\t")
    assert len(history) >= 8  # validations: one per epoch
    assert writes == [40]  # the last step only (the run took far under 10 minutes)
    assert not (run_dir / "resume.pt").exists()
    assert (run_dir / "model.pt").exists()
    # an explicit checkpoint_every still writes every that many steps
    writes.clear()
    _train_tiny(tiny, tmp_path / "every", max_steps=40, batch_size=64, checkpoint_every=10)
    assert writes == [10, 20, 30, 40]
    # a zero-minute budget checkpoints at every step
    writes.clear()
    _train_tiny(tiny, tmp_path / "budget", max_steps=5, checkpoint_minutes=1e-9)
    assert writes == [1, 2, 3, 4, 5]


def test_sigusr1_checkpoints_and_training_goes_on(tiny, tmp_path, monkeypatch):
    writes = _count_resume_writes(monkeypatch)
    original, calls = inference.minibatch_loss, [0]

    def usr1_at_three(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 3:
            signal.raise_signal(signal.SIGUSR1)
        return original(*args, **kwargs)

    monkeypatch.setattr(inference, "minibatch_loss", usr1_at_three)
    summary = _train_tiny(tiny, tmp_path / "run", max_steps=8, val_every=4)
    assert writes == [3, 8] and summary["steps"] == 8


def test_a_finished_run_is_not_trained_again(tiny, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    first = _train_tiny(tiny, run_dir, max_steps=6)
    model_bytes = (run_dir / "model.pt").read_bytes()

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run trained again")

    with monkeypatch.context() as m:
        m.setattr(inference, "make_step", refuse)
        again = _train_tiny(tiny, run_dir, max_steps=6)
    assert again == first and (run_dir / "model.pt").read_bytes() == model_bytes
    # other settings: trained afresh
    changed = _train_tiny(tiny, run_dir, max_steps=7)
    assert changed["steps"] == 7 and changed["training_key"] != first["training_key"]
