"""The workflow's configuration: schema validation with defaults, and the list of runs.

Both the Snakefile and the command line read config.yaml through this module, so a run is
defined the same way with or without Snakemake.

Over 420 lines because validation, the grid expansion and the resolution of one run's settings
for the command line (packaged defaults, ``--set``) read the same validated structure; the
grids are the part to move to a module of their own.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import os
import re

import jsonschema
import yaml

from samsbench import io as sbio

SCHEMA_PATH = os.path.join(os.path.dirname(__file__), "schemas", "config.schema.yaml")
# The paper's constants and one model per family (package data), for `samsbench train`
# without a config file.
DEFAULTS_PATH = os.path.join(os.path.dirname(__file__), "defaults.yaml")


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


# Names become folder and file names and Snakemake wildcards (workflow/rules/common.smk):
# experiments, datasets and models without '.', splits and downloads with it; never a leading
# '.' (hidden files, '..'). A '/' would reach outside results/ or match no rule.
NAME_PATTERNS = {
    "experiments": (r"[A-Za-z0-9_-]+", "letters, digits, '_' and '-'"),
    "datasets": (r"[A-Za-z0-9_-]+", "letters, digits, '_' and '-'"),
    "models": (r"[A-Za-z0-9_-]+", "letters, digits, '_' and '-'"),
    "splits": (r"[A-Za-z0-9_-][A-Za-z0-9_.-]*",
               "letters, digits, '_', '.' and '-', not starting with '.'"),
    "downloads": (r"[A-Za-z0-9_-][A-Za-z0-9_.-]*",
                  "letters, digits, '_', '.' and '-', not starting with '.'"),
}


def check_names(config: dict) -> None:
    """Every name under experiments/datasets/models/splits/downloads is path-safe."""
    for key, (pattern, allowed) in NAME_PATTERNS.items():
        table = config.get(key)
        if not isinstance(table, dict):
            continue  # the schema names a missing or mistyped table
        for name in table:
            if not isinstance(name, str) or not re.fullmatch(pattern, name):
                raise ConfigError(
                    f"config.yaml: {key}: the name {name!r} may only contain {allowed} "
                    "(it becomes a folder or file name)"
                )


def check_families(config: dict) -> None:
    """Each model's family is a registered name or a plug-in that can be found."""
    import importlib.util

    from samsbench.models import FAMILIES

    for name, block in config["models"].items():
        family = block["family"]
        if family in FAMILIES:
            continue
        where = f"config.yaml: models/{name}/family"
        if ":" not in family:
            raise ConfigError(f"{where}: unknown model family {family!r}; known: "
                              f"{', '.join(sorted(FAMILIES))}, or file.py:Class / "
                              "module:Class for a plug-in")
        module = family.rsplit(":", 1)[0]
        if module.endswith(".py"):
            if not os.path.exists(module):
                raise ConfigError(f"{where}: plug-in file not found: {module}")
        else:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                raise ConfigError(f"{where}: plug-in module {module!r} cannot be imported")


def validate(config: dict) -> dict:
    """Fill defaults and check the config; errors name the offending key path."""
    check_names(config)
    validator = _with_defaults(jsonschema.Draft202012Validator)(load_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise ConfigError(f"config.yaml: {where}: {e.message}")
    check_repeats(config)
    check_simulation_params(config)
    if expand_grids(config):
        # the generated splits and models get their defaults and checks like written ones
        errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
        if errors:
            e = errors[0]
            where = "/".join(str(p) for p in e.absolute_path)
            raise ConfigError(f"config.yaml (after expanding grids): {where}: {e.message}")
    apply_budget_scale(config)
    check_references(config)
    check_families(config)
    check_hyperparameters(config)
    return config


def check_repeats(config: dict) -> None:
    """A name or seed listed twice would run (and count) one run twice: every row of
    metrics.tsv doubled and a seed's sd of 0 where one seed ran."""
    lists = [("run", config.get("run") or [])]
    for name, exp in config["experiments"].items():
        for key in ("splits", "models", "seeds"):
            lists.append((f"experiments/{name}/{key}", exp.get(key) or []))
        for model, seeds in (exp.get("model_seeds") or {}).items():
            lists.append((f"experiments/{name}/model_seeds/{model}", seeds or []))
        lists.append((f"experiments/{name}/enrichment/models",
                      (exp.get("enrichment") or {}).get("models") or []))
    for where, items in lists:
        seen = set()
        for item in items:
            if item in seen:
                raise ConfigError(f"config.yaml: {where}: {item!r} is listed twice; remove the "
                                  "repeat (each entry runs once; a repeat would count it twice)")
            seen.add(item)


# The function that receives a dataset's `simulate:` block, by source. Its arguments are read
# from the source file (ast), without importing the simulator and what it imports.
SIMULATORS = {"simulate": ("data/simulate.py", "simulate"),
              "reference_sim": ("data/reference_sim.py", "simulate_reference")}


def _parameters(relative_path: str, function: str) -> list[str]:
    import ast

    with open(os.path.join(os.path.dirname(__file__), relative_path)) as fh:
        tree = ast.parse(fh.read())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == function:
            args = node.args
            return [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
    raise AssertionError(f"{relative_path} defines no {function}()")


def check_simulation_params(config: dict) -> None:
    """Every key of a dataset's ``simulate:`` block is an argument of its simulator."""
    from samsbench.models.hparams import closest

    for name, block in config["datasets"].items():
        params = block.get("simulate")
        if not params or block.get("source") not in SIMULATORS:
            continue
        known = _parameters(*SIMULATORS[block["source"]])
        for key in params:
            if key not in known:
                raise ConfigError(f"config.yaml: datasets/{name}/simulate: unknown argument "
                                  f"{key!r}{closest(key, known)}; known: {', '.join(known)}")


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
        for model in exp.get("model_seeds") or {}:
            if model not in exp["models"]:
                raise ConfigError(f"experiment {name}: model_seeds names {model!r}, which is "
                                  f"not in its models {exp['models']}")
        for model in (exp.get("enrichment") or {}).get("models") or []:
            if model not in exp["models"]:
                raise ConfigError(f"config.yaml: experiments/{name}/enrichment/models: "
                                  f"{model!r} is not a model of this experiment; its models: "
                                  f"{', '.join(exp['models'])}")


class _DuplicateKey(yaml.YAMLError):
    pass


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key written twice in one mapping is an error (PyYAML
    keeps the last silently: a second ``models:`` would drop the first list)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader's own error follows
                continue
            if first is not None:
                raise _DuplicateKey(f"key {key!r} is written twice, at lines {first} and "
                                    f"{line}; YAML would keep only the second: remove or "
                                    "merge one")
            seen[key] = line
        return super().construct_mapping(node, deep)


def read_yaml(path: str) -> dict:
    """A config file's settings, unvalidated; a YAML syntax error names the line and column
    (Snakemake's own loader says only that the file is not valid YAML), a key written twice
    in one mapping both its lines."""
    with open(path) as fh:
        try:
            config = yaml.load(fh, Loader=UniqueKeyLoader) or {}
        except _DuplicateKey as exc:
            raise ConfigError(f"{path}: {exc}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
            problem = getattr(exc, "problem", None) or str(exc)
            raise ConfigError(f"{path}: YAML syntax error at {where}: {problem}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, found "
                          f"{type(config).__name__}")
    return config


def load(path: str = "config.yaml") -> dict:
    """Read and validate a config file; a YAML syntax error names the line and column."""
    return validate(read_yaml(path))


def packaged_defaults() -> dict:
    """A validated config with the paper's ``model_defaults`` and one model per family and
    a placeholder dataset and experiment: what the command line starts from without
    ``--config``."""
    with open(DEFAULTS_PATH) as fh:
        block = yaml.safe_load(fh)
    return validate({"run": [], **block})


def load_or_packaged(path: str | None) -> dict:
    """The config a command reads: ``path`` when given, else ./config.yaml when there is one
    (a checkout), else the packaged defaults (any directory)."""
    if path is None and not os.path.exists("config.yaml"):
        return packaged_defaults()
    return load(path or "config.yaml")


def step_defaults(step: str) -> dict:
    """The schema's defaults of an experiment's ``training`` or ``evaluation`` block."""
    experiment = load_schema()["properties"]["experiments"]["additionalProperties"]
    properties = experiment["properties"][step]["properties"]
    return {k: copy.deepcopy(v["default"]) for k, v in properties.items() if "default" in v}


def resolve_training_run(config: dict, experiment: str | None, model: str,
                         overrides: list[str] = ()) -> tuple[dict, dict]:
    """(hyperparameters, training) of one model: the experiment's values when ``experiment``
    is given, else the config's ``model_defaults`` and the schema's training defaults; then
    each ``key=value`` of ``overrides`` (a YAML value), which names a training setting or a
    hyperparameter of the model's family. ``model`` may also be a family name."""
    from samsbench import models as registry

    config = copy.deepcopy(config)
    if model not in config["models"]:
        if model in registry.FAMILIES:
            config["models"][model] = {"family": model}
        else:
            raise ConfigError(f"unknown model {model!r}; the config defines "
                              f"{sorted(config['models'])}, the families are "
                              f"{sorted(registry.FAMILIES)}")
    if experiment is not None and experiment not in config["experiments"]:
        raise ConfigError(f"unknown experiment {experiment!r}; the config defines "
                          f"{sorted(config['experiments'])}")
    training = step_defaults("training")
    training.pop("unscaled", None)
    if experiment is not None:
        training.update(config["experiments"][experiment]["training"])
    family = config["models"][model]["family"]
    declared = set(registry.declared(family))
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        if key in training:
            check_override(item, key, value, "training")
            training[key] = value
        elif key in declared:
            check_override(item, key, value, "hyperparameters", family)
            config["models"][model][key] = value
        else:
            from samsbench.models.hparams import closest

            known = sorted(set(training) | declared)
            raise ConfigError(f"--set {key}: not a training setting nor a hyperparameter of "
                              f"{family}{closest(key, known)}; known: {', '.join(known)}")
    hp = model_hyperparameters(config, experiment, model)
    return hp, training


def _override_schema(kind: str, key: str) -> dict:
    schema = load_schema()
    if kind == "training":
        experiment = schema["properties"]["experiments"]["additionalProperties"]
        return experiment["properties"]["training"]["properties"][key]
    return schema["$defs"]["hyperparameters"]["properties"].get(key, {})


def check_override(item: str, key: str, value, kind: str, family: str | None = None) -> None:
    """One ``--set key=value`` against the schema (type, range) and, for a hyperparameter, its
    family's typed dataclass: the same checks as config.yaml, before any data is read."""
    errors = list(jsonschema.Draft202012Validator(_override_schema(kind, key)).iter_errors(value))
    if errors:
        hint = ""
        if "integer" in str(errors[0].schema.get("type", "")):
            try:
                number = float(value)
                if number.is_integer():
                    hint = f"; write a whole number, e.g. {key}={int(number)}"
            except (TypeError, ValueError):
                pass
        raise ConfigError(f"--set {item}: {errors[0].message}{hint}")
    if family is not None:
        from samsbench import models as registry

        try:
            registry.hyperparameters(family, {key: value})
        except ValueError as e:
            raise ConfigError(f"--set {item}: {e}") from None


def model_hyperparameters(config: dict, experiment: str | None, model: str) -> dict:
    """``family`` and every hyperparameter the model's family declares: the family's defaults
    (its ``Hyperparameters`` dataclass) < global ``model_defaults`` < the experiment's
    ``model_defaults`` < the model's block. The shared defaults reach only the families that
    declare a key (``n_latent`` every latent model, ``mask_prior_prob`` SAMS-VAE); the model's
    block must fit its family: an unknown key or a wrong type is a ``ConfigError``."""
    from samsbench import models as registry

    block = dict(config["models"][model])
    family = block.pop("family")
    shared = dict(config.get("model_defaults") or {})
    if experiment is not None:
        shared.update(config["experiments"][experiment].get("model_defaults") or {})
    try:
        declared = set(registry.declared(family))
        values = {**{k: v for k, v in shared.items() if k in declared}, **block}
        hp = registry.hyperparameters(family, values)
    except ValueError as e:  # an unknown family, key or value
        raise ConfigError(f"config.yaml: models/{model}: {e}") from None
    return {"family": family, **dataclasses.asdict(hp)}


def check_hyperparameters(config: dict) -> None:
    """Every model's hyperparameters as each experiment that trains it resolves them; a key of
    a ``model_defaults`` block that no family of this config declares is an error too."""
    from samsbench import models as registry
    from samsbench.models.hparams import closest

    declared: set[str] = set()
    for name, block in config["models"].items():
        try:
            declared.update(registry.declared(block["family"]))
        except ValueError as e:
            raise ConfigError(f"config.yaml: models/{name}: {e}") from None
    blocks = [("model_defaults", config.get("model_defaults") or {})]
    blocks += [(f"experiments/{n}/model_defaults", e.get("model_defaults") or {})
               for n, e in config["experiments"].items()]
    for where, defaults in blocks:
        for key in defaults:
            if key not in declared:
                raise ConfigError(f"config.yaml: {where}: unknown hyperparameter {key!r}"
                                  f"{closest(key, sorted(declared))}; no model family of this "
                                  f"config declares it")
    trained = set()
    for name, exp in config["experiments"].items():
        for model in exp["models"]:
            model_hyperparameters(config, name, model)
            trained.add(model)
    for model in set(config["models"]) - trained:
        model_hyperparameters(config, None, model)


def fitted_models(config: dict) -> list[str]:
    """Models whose family fits without gradient training (the baselines and the ceiling):
    the workflow trains and evaluates each such run in one job, a second of work."""
    from samsbench import models as registry

    return sorted(name for name, block in config["models"].items()
                  if not registry.resolve(block["family"]).trains_by_gradient)


def model_seeds(exp: dict, model: str) -> list[int]:
    """A model's training seeds: its entry in the experiment's ``model_seeds``, else ``seeds``."""
    return list((exp.get("model_seeds") or {}).get(model, exp["seeds"]))


def runs(config: dict, experiment: str) -> list[dict]:
    """Every (model, split, seed) of an experiment, with its run directory."""
    exp = config["experiments"][experiment]
    out = []
    for model in exp["models"]:
        family = config["models"][model]["family"]
        for split in exp["splits"]:
            for seed in model_seeds(exp, model):
                out.append({
                    "experiment": experiment, "model": model, "family": family,
                    "split": split, "seed": int(seed), "dataset": exp["dataset"],
                    "dir": sbio.run_dir(config.get("results", "results"), experiment, model,
                                        split, seed),
                })
    return out


# ---------------------------------------------------------------------------------------------
# Grids and the training-budget switch (issue 7: the paper's experiments).
#
# An experiment may declare `split_grid` and `model_grid` instead of (or besides) listing named
# splits and models. Validation expands them into concrete named entries of config["splits"] /
# config["models"] and appends the names to the experiment's lists, so every rule downstream
# sees ordinary named splits and models. Names are deterministic and path-safe, e.g.
# `ood_f0.25_s3` or `sams_vae_L2_mfe_unique`. Configs without grids are left untouched.

SPLIT_PREFIX = {"random": "random", "ood": "ood", "data_efficiency": "de",
                "heldout_perturbation": "heldout"}
# Model-name tokens: canonical order first, other keys after in alphabetical order.
MODEL_TOKEN_ORDER = ["n_latent", "n_layers", "mask_prior_prob", "mask_beta_concentration_1",
                     "mask_beta_concentration_2", "mean_field_encoder", "encoding"]
MODEL_TOKEN_ABBREV = {
    "n_latent": "K", "n_layers": "L", "mask_prior_prob": "pi",
    "mask_beta_concentration_1": "a", "mask_beta_concentration_2": "b",
    "mean_field_encoder": "mfe", "encoder_n_hidden": "H", "decoder_n_hidden": "DH",
    "embedding_encoder_n_layers": "EL", "embedding_encoder_n_hidden": "EH",
    "embedding_prior_scale": "es", "mask_init_logits": "mi", "align_basis_at": "al",
}
BUDGET_KEYS = ("max_steps", "val_every", "checkpoint_every")


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _number_token(x, dot: str = ".") -> str:
    """Short, exact text for a number: 1.0 -> '1', 0.25 -> '0.25'; with dot='p' (model names,
    whose wildcard forbids '.') powers of ten below 1 read 1e-2 and others 0p25."""
    if isinstance(x, bool):
        raise TypeError("booleans are not numbers here")
    if float(x) == int(x):
        return str(int(x))
    text = f"{float(x):g}"
    if dot == ".":
        return text
    if 0 < float(x) < 1:
        exponent = round(math.log10(float(x)))
        if f"{10.0 ** exponent:g}" == text:
            return f"1e{exponent}"
    return text.replace(".", dot)


def split_grid_entries(grid: dict) -> list[tuple[str, dict]]:
    """(name, split block) for every combination of a split grid, fractions outer."""
    kind = grid["kind"]
    prefix = grid.get("prefix") or SPLIT_PREFIX[kind]
    out = []
    for fraction in _as_list(grid.get("fraction", 1.0)):
        for test_fraction in _as_list(grid.get("test_fraction", 0.25)):
            for seed in _as_list(grid.get("seed", 0)):
                tokens = [prefix]
                if kind != "random":
                    tokens.append(f"f{_number_token(fraction)}")
                if kind == "ood" and float(test_fraction) != 0.25:
                    tokens.append(f"t{_number_token(test_fraction)}")
                tokens.append(f"s{int(seed)}")
                block = {"kind": kind, "seed": int(seed), "fraction": float(fraction),
                         "test_fraction": float(test_fraction)}
                out.append(("_".join(tokens), block))
    return out


def _model_token(key: str, value) -> str:
    if isinstance(value, bool):
        return MODEL_TOKEN_ABBREV.get(key, key) if value else ""
    if isinstance(value, (int, float)):
        return f"{MODEL_TOKEN_ABBREV.get(key, key)}{_number_token(value, dot='p')}"
    return str(value)


def model_grid_entries(config: dict, grid: dict) -> list[tuple[str, dict]]:
    """(name, model block) for every combination of one model_grid entry."""
    base = grid["model"]
    if base not in config["models"]:
        raise ConfigError(f"model_grid: unknown base model {base!r}; known: {sorted(config['models'])}")
    keys = [k for k in grid if k != "model"]
    if "family" in keys:
        raise ConfigError("model_grid: set `family` on the base model, not in the grid")
    keys.sort(key=lambda k: (MODEL_TOKEN_ORDER.index(k) if k in MODEL_TOKEN_ORDER
                             else len(MODEL_TOKEN_ORDER), k))
    out = []
    for values in itertools.product(*(_as_list(grid[k]) for k in keys)):
        overrides = dict(zip(keys, values))
        tokens = [_model_token(k, v) for k, v in overrides.items()]
        name = "_".join([base] + [t for t in tokens if t])
        out.append((name, {**config["models"][base], **overrides}))
    return out


def _add_named(table: dict, name: str, block: dict, what: str, experiment: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9_\-.]+", name):
        raise ConfigError(f"experiment {experiment}: generated {what} name {name!r} is not path-safe")
    if name in table and table[name] != block:
        raise ConfigError(
            f"experiment {experiment}: the {what} grid makes {name!r} = {block}, but a different "
            f"{what} of that name exists: {table[name]}")
    table[name] = block


def expand_grids(config: dict) -> bool:
    """Expand every experiment's split_grid / model_grid in place; True if any was found.

    Idempotent: expanding an already expanded config changes nothing.
    """
    found = False
    for name, exp in config["experiments"].items():
        if exp.get("split_grid") is not None:
            found = True
            names = list(exp.get("splits", []))
            for grid in _as_list(exp["split_grid"]):
                for split_name, block in split_grid_entries(grid):
                    _add_named(config["splits"], split_name, block, "split", name)
                    names.append(split_name)
            exp["splits"] = list(dict.fromkeys(names))
        if exp.get("model_grid") is not None:
            found = True
            names = list(exp.get("models", []))
            for grid in exp["model_grid"]:
                for model_name, block in model_grid_entries(config, grid):
                    _add_named(config["models"], model_name, block, "model", name)
                    names.append(model_name)
            exp["models"] = list(dict.fromkeys(names))
        if not exp.get("splits") or not exp.get("models"):
            raise ConfigError(f"experiment {name}: needs splits (or split_grid) and models "
                              f"(or model_grid)")
    return found


def apply_budget_scale(config: dict) -> None:
    """Multiply every experiment's max_steps / val_every / checkpoint_every by budget_scale
    (at least 1 step). The unscaled values are kept in training["unscaled"], so validating the
    same config twice does not scale twice; with budget_scale 1 nothing is touched."""
    scale = float(config.get("budget_scale", 1.0))
    for exp in config["experiments"].values():
        training = exp.setdefault("training", {})
        if scale == 1.0 and "unscaled" not in training:
            continue
        base = training.get("unscaled") or {k: training.get(k) for k in BUDGET_KEYS}
        training["unscaled"] = dict(base)
        for key in BUDGET_KEYS:
            if base.get(key) is not None:
                training[key] = max(1, int(round(base[key] * scale)))


def experiment_run_settings(config: dict, experiment: str) -> list[dict]:
    """Each run of an experiment with the settings the paper's tables group by: effective
    model hyperparameters and the split's kind, fraction and seed (split_seed)."""
    out = []
    for run in runs(config, experiment):
        hp = model_hyperparameters(config, experiment, run["model"])
        split = config["splits"][run["split"]]
        out.append({
            **run,
            "n_latent": hp.get("n_latent"), "n_layers": hp.get("n_layers"),
            "encoding": hp.get("encoding", "additive"),
            "mean_field_encoder": bool(hp.get("mean_field_encoder", False)),
            "mask_prior_prob": hp.get("mask_prior_prob"),
            "mask_beta_concentration_2": hp.get("mask_beta_concentration_2"),
            "split_kind": split["kind"], "fraction": float(split.get("fraction", 1.0)),
            "split_seed": int(split.get("seed", 0)),
        })
    return out
