"""The family contract: typed hyperparameters, the layering of config defaults, what each family
declares to the engine, and a new family added from a test file alone."""

import copy
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch import nn
from torch.distributions import Normal

from helpers import for_family, tiny_dataset
from samsbench import config as sbconfig
from samsbench import inference
from samsbench import models as registry
from samsbench.stages import train as train_stage
from samsbench.models.base import LatentHyperparameters, LatentModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILIES = sorted(registry.FAMILIES)
LATENT = [f for f in FAMILIES if registry.FAMILIES[f].trains_by_gradient]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_dataset(str(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="module")
def raw_config():
    with open(os.path.join(ROOT, "config.yaml")) as fh:
        return yaml.safe_load(fh)


# -- hyperparameters -----------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_declares_typed_hyperparameters_with_one_default_each(family):
    cls = registry.FAMILIES[family]
    params = cls.Hyperparameters()  # every field has a default
    assert dataclasses.is_dataclass(params)
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.encoding = "unique"
    # a misspelt key names the key, the family and the closest declared name
    name = registry.declared(family)[0]
    typo = name[:-2] + name[-1] + name[-2]
    message = rf"^{family}: unknown hyperparameter '{typo}' \(did you mean '{name}'\?\)"
    with pytest.raises(registry.HyperparameterError, match=message):
        registry.hyperparameters(family, {typo: 1})
    # one constructor for every family: (n_genes, perturbations, hyperparameters)
    model = registry.build(family, 5, ["A", "B"], params)
    assert model.hparams == params and model.trains_by_gradient == isinstance(model, nn.Module)


def test_values_are_checked_against_the_declared_types():
    hp = registry.hyperparameters("svae_plus", {"mask_beta_concentration_2": 5, "n_latent": 4.0})
    assert hp.mask_beta_concentration_2 == 5.0 and isinstance(hp.mask_beta_concentration_2, float)
    assert hp.n_latent == 4 and isinstance(hp.n_latent, int)
    for bad, message in [({"n_latent": 2.5}, "'n_latent' must be int, got 2.5"),
                         ({"n_latent": True}, "'n_latent' must be int"),
                         ({"mask_kl": "exact"}, "'mask_kl' must be one of 'sample', 'analytic'"),
                         ({"mean_field_encoder": "yes"}, "'mean_field_encoder' must be bool"),
                         ({"n_layers": None}, "'n_layers' must not be null")]:
        with pytest.raises(registry.HyperparameterError, match=message):
            registry.hyperparameters("sams_vae", bad)
    assert registry.hyperparameters("sams_vae", {"align_basis_at": None}).align_basis_at is None


def test_a_misspelt_hyperparameter_fails_config_validation(raw_config):
    cfg = copy.deepcopy(raw_config)
    cfg["models"]["sams_vae"]["n_latnet"] = 50
    with pytest.raises(sbconfig.ConfigError, match=r"models/sams_vae: sams_vae: unknown "
                       r"hyperparameter 'n_latnet' \(did you mean 'n_latent'\?\)"):
        sbconfig.validate(cfg)
    # a key of another family is unknown to this one
    cfg = copy.deepcopy(raw_config)
    cfg["models"]["svae_plus"]["align_basis_at"] = 0.3
    with pytest.raises(sbconfig.ConfigError,
                       match="svae_plus: unknown hyperparameter 'align_basis_at'"):
        sbconfig.validate(cfg)
    # a grid's keys too, named by the generated model
    cfg = copy.deepcopy(raw_config)
    cfg["experiments"]["replogle"]["model_grid"][0]["n_layer"] = [1, 2]
    with pytest.raises(sbconfig.ConfigError,
                       match="conditional_vae: unknown hyperparameter 'n_layer'"):
        sbconfig.validate(cfg)
    # shared defaults: a key that no family of the config declares
    for path in (["model_defaults"], ["experiments", "simulated", "model_defaults"]):
        cfg = copy.deepcopy(raw_config)
        block = cfg
        for key in path:
            block = block[key]
        block["mask_prior_prb"] = 0.1
        with pytest.raises(sbconfig.ConfigError, match=rf"{'/'.join(path)}: unknown hyperparameter "
                           r"'mask_prior_prb' \(did you mean 'mask_prior_prob'\?\)"):
            sbconfig.validate(cfg)


def test_layering_family_defaults_then_global_then_experiment_then_model_block(raw_config):
    cfg = copy.deepcopy(raw_config)
    cfg["model_defaults"] = {"n_latent": 7, "n_layers": 3, "mask_prior_prob": 0.2}
    cfg["experiments"]["simulated"]["model_defaults"] = {"n_layers": 2, "mask_prior_prob": 0.3}
    cfg["models"]["sams_vae"] = {"family": "sams_vae", "mask_prior_prob": 0.4}
    cfg = sbconfig.validate(cfg)
    sams = sbconfig.model_hyperparameters(cfg, "simulated", "sams_vae")
    default = registry.hyperparameters("sams_vae")
    assert (sams["n_latent"], sams["n_layers"], sams["mask_prior_prob"]) == (7, 2, 0.4)
    assert sams["encoder_n_hidden"] == default.encoder_n_hidden  # the family's own default
    # a shared key reaches only the families that declare it
    cvae = sbconfig.model_hyperparameters(cfg, "simulated", "conditional_vae")
    assert "mask_prior_prob" not in cvae and cvae["n_layers"] == 2
    assert sbconfig.model_hyperparameters(cfg, "simulated", "control_mean") == {
        "family": "control_mean", "encoding": "additive"}
    # svae_plus keeps its family default (unique) unless a block says otherwise
    del cfg["models"]["svae_plus"]["encoding"]
    assert sbconfig.model_hyperparameters(cfg, "simulated", "svae_plus")["encoding"] == "unique"


# -- what a family declares to the engine --------------------------------------------------

@pytest.mark.parametrize("family", LATENT)
def test_declared_globals_are_the_per_perturbation_ones(tiny, family):
    """sample_globals returns exactly the declared variables, one row per perturbation; the
    declared global parameters get no gradient from control cells and the others do."""
    data = train_stage.load_data(*tiny, encoding=registry.hyperparameters(family).encoding)
    torch.manual_seed(0)
    model = registry.build(family, len(data.genes), data.columns, for_family(family))
    g, _ = model.sample_globals(3)
    assert sorted(g) == sorted(model.global_variables)
    assert all(v.shape[:2] == (3, len(data.columns)) for v in g.values())
    named = dict(model.named_parameters())
    global_ids = {id(p) for p in model.global_parameters()}
    assert global_ids <= {id(p) for p in named.values()}
    assert bool(global_ids) == bool(model.global_variables)
    rows = data.split_index("train")
    control = rows[torch.from_numpy(data.labels[rows.numpy()] == data.control)]
    inv = inference.inverse_counts(data.dose_counts("train"))
    out = inference.minibatch_loss(model, data.X[control], data.dosage(data.codes[control]), inv, 2)
    out.loss.backward()
    for name, p in named.items():
        moved = p.grad is not None and bool(p.grad.abs().sum() > 0)
        assert moved == (id(p) not in global_ids), name


def test_mean_effect_models_save_and_load_like_latent_ones(tiny, tmp_path):
    data_path, split_path = tiny
    run = tmp_path / "run"
    train_stage.train(data_path, split_path, {"family": "additive_mean"}, {}, str(run), 0,
                    progress=False)
    model, record = inference.load_model(str(run / "model.pt"))
    assert record["hp"] == {"encoding": "additive"} and not model.trains_by_gradient
    data = train_stage.load_data(data_path, split_path)
    labels = sorted(set(data.labels))
    fresh = registry.build("additive_mean", len(data.genes), data.columns)
    fresh.fit(data)
    np.testing.assert_array_equal(inference.predicted_means(model, data, labels),
                                  fresh.predict_means(labels))
    assert list(pd.read_csv(run / "history.tsv", sep="\t")) == [
        "step", "train_loss", "val_loss", "train_reconstruction", "train_kl_local",
        "train_kl_global", "val_reconstruction", "val_kl_local", "val_kl_global", "wall_seconds"]


def test_importing_the_engine_leaves_distribution_checks_and_files_alone():
    code = ("import sys, json, torch; import samsbench.inference as inf;"
            "D = torch.distributions.Distribution; before = D._validate_args\n"
            "with inf.unchecked_distributions(): inside = D._validate_args\n"
            "print(json.dumps([before, inside, D._validate_args,"
            " [m for m in ('samsbench.data.contract', 'anndata') if m in sys.modules]]))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert json.loads(out.stdout.splitlines()[-1]) == [True, False, True, []]


# -- a new family from a test file ---------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ToyHyperparameters(LatentHyperparameters):
    shift_init: float = 0.0


class ToyShift(LatentModel):
    """z ~ N(D @ S, I) with a learned point shift S per perturbation; q(z | x)."""

    family = "toy_shift"
    Hyperparameters = ToyHyperparameters

    def __init__(self, n_genes, perturbations, hparams):
        super().__init__(n_genes, perturbations, hparams)
        from samsbench.nn import GaussianEncoder

        hp = self.hparams
        self.S = nn.Parameter(torch.full((self.n_perturbations, self.n_latent), hp.shift_init))
        self.encoder = GaussianEncoder(n_genes, self.n_latent, hp.encoder_n_hidden, hp.n_layers)
        self.decoder = self.decoder_for(self.n_latent)

    def cell_context(self, dose, g):
        return dose.apply(self.S.expand(1, -1, -1))

    def local_posterior(self, xn, mean):
        return self.encoder(xn)

    def local_prior(self, mean):
        return Normal(mean, torch.ones_like(mean))

    def decoder_input(self, z, mean):
        return z


def test_a_family_registered_from_a_test_file_trains(tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(registry.FAMILIES, "toy_shift", ToyShift)
    data_path, split_path = tiny
    hp = {"family": "toy_shift", "n_latent": 3, "encoder_n_hidden": 8, "decoder_n_hidden": 8,
          "shift_init": 0.1}
    training = {"max_steps": 6, "batch_size": 32, "val_every": 3, "iwelbo_particles": 5}
    summary = train_stage.train(data_path, split_path, hp, training, str(tmp_path / "run"), 0,
                              progress=False)
    assert summary["steps"] == 6 and np.isfinite(summary["val_iwelbo"])
    history = pd.read_csv(tmp_path / "run" / "history.tsv", sep="\t")
    assert list(history["step"]) == [3, 6] and (history["val_kl_global"] == 0).all()
    model, record = inference.load_model(str(tmp_path / "run" / "model.pt"))
    assert isinstance(model, ToyShift) and record["hp"]["shift_init"] == 0.1
    with pytest.raises(registry.HyperparameterError,
                       match="toy_shift: unknown hyperparameter 'shift_int'"):
        registry.build("toy_shift", 4, ["A"], {"shift_int": 1.0})
