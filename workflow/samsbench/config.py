"""The workflow's configuration: schema validation with defaults, and the list of runs.

Both the Snakefile and the command line read config.yaml through this module, so a run is
defined the same way with or without Snakemake.
"""

from __future__ import annotations

import copy
import os

import jsonschema
import yaml

SCHEMA_PATH = os.path.join(os.path.dirname(__file__), "..", "schemas", "config.schema.yaml")


class ConfigError(ValueError):
    pass


def _with_defaults(validator_class):
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def load_schema() -> dict:
    with open(SCHEMA_PATH) as fh:
        return yaml.safe_load(fh)


def validate(config: dict) -> dict:
    """Fill defaults and check the config; errors name the offending key path."""
    validator = _with_defaults(jsonschema.Draft202012Validator)(load_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise ConfigError(f"config.yaml: {where}: {e.message}")
    check_references(config)
    return config


def check_references(config: dict) -> None:
    for name in config["run"]:
        if name not in config["experiments"]:
            raise ConfigError(f"config.yaml: run lists unknown experiment {name!r}; "
                              f"known: {sorted(config['experiments'])}")
    for name, exp in config["experiments"].items():
        if exp["dataset"] not in config["datasets"]:
            raise ConfigError(f"experiment {name}: unknown dataset {exp['dataset']!r}")
        for key, table in (("splits", "splits"), ("models", "models")):
            for item in exp[key]:
                if item not in config[table]:
                    raise ConfigError(f"experiment {name}: unknown {key[:-1]} {item!r}")


def load(path: str = "config.yaml") -> dict:
    with open(path) as fh:
        return validate(yaml.safe_load(fh) or {})


def model_hyperparameters(config: dict, experiment: str, model: str) -> dict:
    """Global model defaults < experiment model defaults < the model's own block."""
    exp = config["experiments"][experiment]
    hp = {**config.get("model_defaults", {}), **exp.get("model_defaults", {}),
          **config["models"][model]}
    return hp


def runs(config: dict, experiment: str) -> list[dict]:
    """Every (model, split, seed) of an experiment, with its run directory."""
    exp = config["experiments"][experiment]
    out = []
    for model in exp["models"]:
        family = config["models"][model]["family"]
        for split in exp["splits"]:
            for seed in exp["seeds"]:
                out.append({
                    "experiment": experiment, "model": model, "family": family,
                    "split": split, "seed": int(seed), "dataset": exp["dataset"],
                    "dir": f"{config.get('results', 'results')}/{experiment}/runs/{model}/{split}/seed{seed}",
                })
    return out
