"""Model registry: a family is found by its registry name (config ``family:``).

Built-in families live one per file in this package. A new family is one file defining a
subclass of ``LatentModel`` (or ``MeanEffectModel``) with a ``family`` name; name it in
config as ``family: path/to/file.py:ClassName`` or ``family: package.module:ClassName``, or
call ``register`` (see docs/adding_a_model.md).
"""

from __future__ import annotations

import importlib
import importlib.util
import os

from samsbench.models.base import LatentModel, MeanEffectModel
from samsbench.models.baselines import AdditiveMean, ControlMean
from samsbench.models.conditional_vae import ConditionalVAE
from samsbench.models.cpa_vae import CpaVAE
from samsbench.models.sams_vae import SamsVAE, SamsVAEMeanField
from samsbench.models.sams_vae_no_mask import SamsVAENoMask
from samsbench.models.svae_plus import SvaePlus

FAMILIES: dict[str, type] = {}


def register(cls: type) -> type:
    """Register a family class under its ``family`` attribute (usable as a decorator)."""
    if not getattr(cls, "family", ""):
        raise ValueError(f"{cls.__name__} needs a class attribute 'family' (its registry name)")
    FAMILIES[cls.family] = cls
    return cls


for _cls in (SamsVAE, SamsVAEMeanField, SamsVAENoMask, CpaVAE, ConditionalVAE, SvaePlus,
             ControlMean, AdditiveMean):
    register(_cls)


def resolve(family: str) -> type:
    """A registry name, or ``file.py:Class`` / ``module:Class`` for a plug-in."""
    if family in FAMILIES:
        return FAMILIES[family]
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


def build(family: str, n_genes: int, perturbations: list[str], hp: dict):
    cls = resolve(family)
    if issubclass(cls, MeanEffectModel):
        return cls(hp)
    return cls(n_genes, perturbations, hp)
