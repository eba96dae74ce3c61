"""Model registry: a family is found by its registry name (config ``family:``).

Built-in families live one per file in this package. A new family is one file defining a
subclass of ``LatentModel`` (or ``MeanEffectModel``) with a ``family`` name and a
``Hyperparameters`` dataclass; name it in config as ``family: path/to/file.py:ClassName`` or
``family: package.module:ClassName``, or call ``register`` (see docs/adding_a_model.md).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os

from samsbench.models.base import LatentModel, MeanEffectModel
from samsbench.models.hparams import HyperparameterError, parse
from samsbench.models.baselines import AdditiveMean, ControlMean
from samsbench.models.conditional_vae import ConditionalVAE
from samsbench.models.cpa_vae import CpaVAE
from samsbench.models.linear import LinearModel
from samsbench.models.replicate import Replicate
from samsbench.models.sams_vae import SamsVAE, SamsVAEMeanField
from samsbench.models.sams_vae_no_mask import SamsVAENoMask
from samsbench.models.svae_plus import SvaePlus
from samsbench.models.train_mean import TrainMean

FAMILIES: dict[str, type] = {}


ROLES = ("model", "baseline", "ceiling")


def register(cls: type) -> type:
    """Register a family class under its ``family`` attribute (usable as a decorator)."""
    if not getattr(cls, "family", ""):
        raise ValueError(f"{cls.__name__} needs a class attribute 'family' (its registry name)")
    if getattr(cls, "role", None) not in ROLES:
        raise ValueError(f"{cls.__name__}: role {getattr(cls, 'role', None)!r} is not one of "
                         f"{', '.join(ROLES)}")
    FAMILIES[cls.family] = cls
    return cls


for _cls in (SamsVAE, SamsVAEMeanField, SamsVAENoMask, CpaVAE, ConditionalVAE, SvaePlus,
             ControlMean, AdditiveMean, TrainMean, LinearModel, Replicate):
    register(_cls)


def resolve(family: str, plugins: bool = True) -> type:
    """A registry name, or ``file.py:Class`` / ``module:Class`` for a plug-in. A plug-in runs
    code: ``plugins=False`` (a name read from a checkpoint, not from the user's config)
    accepts registry names only."""
    if family in FAMILIES:
        return FAMILIES[family]
    if not plugins:
        raise ValueError(
            f"refusing model family {family!r}: a checkpoint may only name a registered "
            f"family ({', '.join(sorted(FAMILIES))}); a plug-in is loaded from the config "
            "you wrote (pass its family to load_model), never from a file being loaded"
        )
    if ":" in family:
        where, name = family.rsplit(":", 1)
        if where.endswith(".py"):
            if not os.path.exists(where):
                raise ValueError(f"model plug-in file not found: {where}")
            spec = importlib.util.spec_from_file_location(f"samsbench_plugin_{name}", where)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
        cls = getattr(module, name, None)
        if cls is None or not issubclass(cls, (LatentModel, MeanEffectModel)):
            raise ValueError(f"{family}: no LatentModel or MeanEffectModel subclass named {name}")
        return cls
    raise ValueError(f"unknown model family {family!r}; known: {sorted(FAMILIES)}")


def card(family: str) -> dict:
    """What the report, the figures and the normalised scores know of a family, as its class
    declares it: role (model / baseline / ceiling), label, colour, has_masks, has_likelihood."""
    cls = resolve(family)
    return {"role": cls.role, "label": cls.label or family, "colour": cls.colour,
            "has_masks": cls.has_masks, "has_likelihood": cls.has_likelihood}


# The family of a predictions file made outside the package (score_external): a contender.
EXTERNAL = "external"


def roles(families=None) -> dict[str, str]:
    """{family: role} of ``families`` (default: every registered one)."""
    return {f: "model" if f == EXTERNAL else card(f)["role"]
            for f in (FAMILIES if families is None else families)}


def hyperparameters(family: str, values=None, strict: bool = True):
    """The family's ``Hyperparameters`` for a config block (without ``family``): defaults
    filled in; an unknown key or a value of the wrong type is a ``HyperparameterError``."""
    cls = resolve(family)
    return parse(cls.Hyperparameters, values, family, strict)


def declared(family: str) -> list[str]:
    """The hyperparameter names a family declares."""
    return [f.name for f in dataclasses.fields(resolve(family).Hyperparameters)]


def build(family: str, n_genes: int, perturbations: list[str], hp=None, strict: bool = True):
    """A new model; ``hp`` is a config block (a mapping) or the family's ``Hyperparameters``."""
    return resolve(family)(n_genes, perturbations, hyperparameters(family, hp, strict))


__all__ = ["FAMILIES", "ROLES", "HyperparameterError", "LatentModel", "MeanEffectModel", "build",
           "card", "declared", "hyperparameters", "register", "resolve", "roles"]
