"""The layering of the package (docs/architecture.md), read from the modules' actual imports
(transitively, function bodies included; the rules' .smk files and scripts too), no file I/O in
the pure layers, and the one-entry registries for a metric, a dataset reader and a gene-set
source."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import samsbench

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(samsbench.__file__).parent
SOURCES = sorted(PACKAGE.rglob("*.py"))

# docs/architecture.md, "What may import what": each group, and the samsbench modules its
# transitive import closure may contain (the group itself always). Prefixes match submodules.
PURE = ("samsbench.models", "samsbench.nn", "samsbench.enrichment", "samsbench.plots",
        "samsbench.metrics", "samsbench.ceiling", "samsbench.labels", "samsbench.paper")
CLOSURE_ALLOWED = {
    "samsbench.io": (),
    "samsbench.labels": (),
    "samsbench.nn": (),
    "samsbench.paper": (),
    "samsbench.enrichment": (),
    "samsbench.models": ("samsbench.nn", "samsbench.labels"),
    # the family cards (label, colour) from the model registry
    "samsbench.plots": ("samsbench.paper", "samsbench.enrichment", "samsbench.models",
                        "samsbench.nn", "samsbench.labels"),
    "samsbench.metrics": ("samsbench.labels",),
    # the ceiling and the bootstrap; the families' roles are passed in, not imported
    "samsbench.ceiling": ("samsbench.metrics", "samsbench.labels"),
    "samsbench.inference": ("samsbench.models", "samsbench.nn", "samsbench.labels",
                            "samsbench.io"),
    "samsbench.provenance": ("samsbench.io",),
    "samsbench.config": ("samsbench.io", "samsbench.models", "samsbench.nn", "samsbench.labels"),
    "samsbench.data": ("samsbench.io", "samsbench.labels", "samsbench.nn"),
}
# A stage may import everything above except the CLI and other stages; these stage-to-stage
# imports are the stated exceptions (shared loaders and readers), and they form no cycle.
CROSS_STAGE = {
    "samsbench.stages.evaluate": {"samsbench.stages.train"},
    "samsbench.stages.export": {"samsbench.stages.train", "samsbench.stages.evaluate"},
    "samsbench.stages.figures": {"samsbench.stages.enrich", "samsbench.stages.report"},
}
# Entry points: what they may import directly (the CLI parses and calls stages; config and io
# name its paths). The rules' own process (.smk) also reads the download's and memory tables.
CLI_DIRECT = ("samsbench.stages", "samsbench.config", "samsbench.io")
SCRIPT_DIRECT = ("samsbench.stages",)
SMK_DIRECT = ("samsbench.stages", "samsbench.config", "samsbench.io", "samsbench.data.download",
              "samsbench.data.memory")
# Calls that read or write files; a pure layer makes none (text parsers take text: a
# pandas reader over io.StringIO is parsing, not I/O).
IO_ATTRIBUTES = {"to_csv", "to_parquet", "to_pickle", "to_hdf", "to_json", "write_h5ad",
                 "write_text", "write_bytes", "read_text", "read_bytes", "savefig", "savez",
                 "savez_compressed", "savetxt", "loadtxt", "genfromtxt", "mkdir", "unlink",
                 "touch", "symlink_to"}
IO_MODULE_CALLS = {("np", "save"), ("np", "load"), ("numpy", "save"), ("numpy", "load"),
                   ("torch", "save"), ("torch", "load"), ("json", "dump"), ("json", "load"),
                   ("yaml", "safe_load"), ("yaml", "safe_dump"), ("pickle", "dump"),
                   ("pickle", "load"), ("ad", "read_h5ad"), ("anndata", "read_h5ad"),
                   ("os", "remove"), ("shutil", "copy"), ("shutil", "move")}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in SOURCES}


def _is_under(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _imports(source: str, name: str, is_package: bool = False) -> set[str]:
    """Every samsbench module a source imports, at top level or inside a function."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found.add(base)
            # `from samsbench import io` imports the module samsbench.io
            found.update(f"{base}.{a.name}" for a in node.names)
    # the root package holds only __version__; a name that is no module is an attribute
    return {m for m in found if m in MODULES and m not in ("samsbench", name)}


def _graph(**replaced: str) -> dict[str, set[str]]:
    """Direct imports of every package module; ``replaced`` swaps a module's source."""
    return {name: _imports(replaced.get(name) or path.read_text(), name,
                           path.name == "__init__.py")
            for name, path in MODULES.items()}


def _closure(graph: dict[str, set[str]], start: set[str]) -> set[str]:
    seen, todo = set(), list(start)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph.get(module, ()))
    return seen


def _layer_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for name in graph:
        reach = _closure(graph, graph[name])
        group = next((g for g in CLOSURE_ALLOWED if _is_under(name, [g])), None)
        if group is not None:
            bad += [f"{name} imports {m}" for m in sorted(reach)
                    if not _is_under(m, (group, *CLOSURE_ALLOWED[group]))]
        elif _is_under(name, ["samsbench.stages"]):
            stages = {m for m in graph[name] if _is_under(m, ["samsbench.stages"])}
            bad += [f"{name} imports {m}" for m in sorted(stages - CROSS_STAGE.get(name, set()))
                    if m not in (name, "samsbench.stages")]
            bad += [f"{name} imports {m}" for m in sorted(reach)
                    if _is_under(m, ["samsbench.cli", "samsbench.__main__"])]
            if name in reach:
                bad.append(f"{name} imports itself through another stage")
    return bad


def _io_calls(source: str) -> list[str]:
    """File reads and writes in a source: open(), pandas readers, writers, np/torch save/load."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id == "open":
            found.append(f"line {node.lineno}: open()")
        elif isinstance(func, ast.Attribute):
            owner = func.value.id if isinstance(func.value, ast.Name) else None
            parses_text = (node.args and isinstance(node.args[0], ast.Call)
                           and "StringIO" in ast.unparse(node.args[0].func))
            if func.attr in IO_ATTRIBUTES or (owner, func.attr) in IO_MODULE_CALLS or (
                    owner in ("pd", "pandas") and func.attr.startswith("read_")
                    and not parses_text):
                found.append(f"line {node.lineno}: {ast.unparse(func)}()")
    return found


def _smk_imports(text: str) -> set[str]:
    """samsbench modules a .smk file imports (import lines parse as Python on their own)."""
    lines = [ln.strip() for ln in text.splitlines()
             if re.match(r"\s*(import|from)\s+samsbench", ln)]
    return _imports("\n".join(lines), "workflow") if lines else set()


def test_every_module_imports():
    for info in pkgutil.walk_packages([str(PACKAGE)], prefix="samsbench."):
        if info.name != "samsbench.__main__":  # runs the command line
            importlib.import_module(info.name)


def test_every_layer_imports_only_what_its_row_allows():
    assert not _layer_violations(_graph())


def test_the_layer_check_sees_a_transitive_violation():
    # models -> metrics -> (labels) and models -> provenance -> io, as in issue 23
    base = MODULES["samsbench.models.base"].read_text()
    bad = _layer_violations(_graph(**{"samsbench.models.base": base
                                      + "\nfrom samsbench import metrics, provenance\n"}))
    assert "samsbench.models.base imports samsbench.metrics" in bad
    assert "samsbench.models.base imports samsbench.io" in bad  # through provenance
    # a family imports base; the closure carries the violation up to it
    assert "samsbench.models.sams_vae imports samsbench.provenance" in bad
    # a stage importing a stage that is no stated exception
    bad = _layer_violations(_graph(**{"samsbench.stages.plan": "from samsbench.stages import train"}))
    assert bad == ["samsbench.stages.plan imports samsbench.stages.train"]


@pytest.mark.parametrize("path", [p for p in SOURCES if _is_under(_module_name(p), PURE)],
                         ids=_module_name)
def test_pure_layers_read_and_write_no_file(path):
    assert not _io_calls(path.read_text()), f"{_module_name(path)} does file I/O"


def test_the_io_check_sees_a_plot_that_reads_a_file():
    plot = ("import pandas as pd\n\ndef draw(path):\n    from samsbench import inference\n"
            "    return pd.read_csv(path, sep='\\t')\n")
    assert _io_calls(plot) == ["line 5: pd.read_csv()"]
    bad = _layer_violations(_graph(**{"samsbench.plots.experiment": plot}))
    assert "samsbench.plots.experiment imports samsbench.inference" in bad
    assert "samsbench.plots.experiment imports samsbench.io" in bad  # inference's checkpoints
    assert _io_calls("import io\nimport pandas as pd\npd.read_csv(io.StringIO(text))\n") == []
    assert len(_io_calls("open(p)\nnp.save(p, a)\ntorch.load(p)\nframe.to_csv(p)\n"
                         "Path(p).write_text(t)\n")) == 5


@pytest.mark.parametrize("path", sorted((ROOT / "workflow" / "scripts").glob("*.py")),
                         ids=lambda p: p.name)
def test_rule_scripts_call_only_stages(path):
    found = _imports(path.read_text(), "scripts")
    if path.name != "_log.py":
        assert found, f"{path.name} calls no stage"
    assert all(_is_under(m, SCRIPT_DIRECT) for m in found), found


@pytest.mark.parametrize("path", sorted((ROOT / "workflow" / "rules").glob("*.smk")),
                         ids=lambda p: p.name)
def test_rules_import_only_stages_settings_and_tables(path):
    found = _smk_imports(path.read_text())
    assert all(_is_under(m, SMK_DIRECT) for m in found), found


def test_the_smk_check_sees_a_violation():
    assert _smk_imports("rule a:\n    run:\n        from samsbench import metrics\n") == {
        "samsbench.metrics"}


def test_the_rules_modules_load_no_torch():
    # what every .smk imports loads in Snakemake's process for each `snakemake` call;
    # torch alone costs seconds there (config validation still imports the model registry,
    # and with it torch: issue 23.6, not done)
    modules = sorted(set().union(*(_smk_imports(p.read_text())
                                   for p in (ROOT / "workflow" / "rules").glob("*.smk"))))
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + "print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]", f"the rules' imports load {out.strip()}"


def test_cli_imports_only_stages_and_settings():
    found = _imports(MODULES["samsbench.cli"].read_text(), "samsbench.cli")
    assert all(_is_under(m, CLI_DIRECT) for m in found), found
    assert {"samsbench.stages.data", "samsbench.stages.train", "samsbench.stages.evaluate",
            "samsbench.stages.enrich"} <= found


def test_no_long_module_without_a_reason():
    for path in SOURCES:
        text = path.read_text()
        if len(text.splitlines()) > 420:
            doc = ast.get_docstring(ast.parse(text)) or ""
            assert "lines" in doc, f"{_module_name(path)}: {len(text.splitlines())} lines"


def test_every_cli_option_has_help():
    from samsbench import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.choices and isinstance(a.choices, dict))
    assert {"simulate", "prepare", "split", "train", "evaluate", "score", "download",
            "enrich"} <= set(sub.choices)
    for verb, p in sub.choices.items():
        for action in p._actions:
            if action.dest != "help":
                assert action.help, f"samsbench {verb} {action.option_strings}: no help"


# ------------------------------------------------------------------------------ registries


def test_a_metric_is_one_registry_entry(monkeypatch):
    from samsbench import metrics

    monkeypatch.setitem(metrics.METRICS, "max_abs_error", lambda p, t, _: float(np.abs(p - t).max()))
    true = pd.DataFrame([[1.0, 2.0], [0.0, -1.0]], index=["a", "b"], columns=["g1", "g2"])
    pred = true + np.array([[0.5, 0.0], [0.0, -3.0]])
    table = metrics.ate_metrics(pred, true, {"all": ["a", "b"], "test": ["b"]})
    value = table.set_index(["metric", "subset"])["value"]
    assert value[("max_abs_error", "all")] == 3.0
    assert value[("max_abs_error", "test")] == 3.0
    assert list(table.loc[table.subset == "all", "metric"])[-1] == "max_abs_error"


def test_a_dataset_reader_is_one_registry_entry(monkeypatch, tmp_path):
    from samsbench.data import contract
    from samsbench.stages import data

    source = tmp_path / "counts.tsv"
    source.write_text("cell\tperturbation\tG1\tG2\n"
                      "c1\tnon-targeting\t1\t2\nc2\tnon-targeting\t0\t3\nc3\tG1\t5\t0\n")

    def read_tsv(block, path, out):
        import anndata as ad

        frame = pd.read_csv(path, sep="\t", index_col="cell")
        genes = [c for c in frame if c != "perturbation"]
        contract.write(ad.AnnData(X=frame[genes].to_numpy(np.float32),
                                  obs=frame[["perturbation"]],
                                  var=pd.DataFrame(index=genes)), out)

    monkeypatch.setitem(data.READERS, "counts_tsv", data.Reader(read_tsv, path_input=True))
    block = {"source": "counts_tsv", "path": str(source)}
    assert data.required_inputs(block) == [str(source)]
    data.prepare(block, data.required_inputs(block), tmp_path / "prepared.h5ad")
    adata = contract.read(tmp_path / "prepared.h5ad")
    assert list(adata.obs["perturbation"]) == ["non-targeting", "non-targeting", "G1"]
    assert adata.X.sum() == 11
    with pytest.raises(ValueError, match="unknown dataset source 'nope'.*counts_tsv"):
        data.required_inputs({"source": "nope"})


def test_a_gene_set_source_is_one_registry_entry(monkeypatch, tmp_path):
    from samsbench.stages import enrich

    def inline(name, entry, _dataset, _checksums):
        return {term: set(genes) for term, genes in entry["sets"].items()}

    monkeypatch.setitem(enrich.SOURCES, "inline",
                        enrich.Source(inline, lambda name, e: "the config itself"))
    config_sets = {"tiny": {"source": "inline", "sets": {"S1": ["A", "B", "C"]},
                            "version": "v1", "licence": "CC0"}}
    assert enrich.load_gene_sets("tiny", config_sets) == {"S1": {"A", "B", "C"}}
    out = tmp_path / "tiny.gmt"
    assert enrich.materialise("tiny", config_sets, None, out) == 1
    assert out.read_text() == "S1\t\tA\tB\tC\n"
    table = enrich.sources([out], config_sets, tmp_path / "sources.tsv")
    assert table.iloc[0][["location", "version", "n_genes"]].tolist() == ["the config itself",
                                                                           "v1", 3]


def test_a_baseline_is_one_class_and_one_config_block(monkeypatch, tmp_path):
    # what a new baseline's file holds: a family class with its card; nothing else is edited
    from samsbench import config as sbconfig
    from samsbench import io as sbio
    from samsbench import models as registry
    from samsbench.models.baselines import ControlMean
    from samsbench.stages import evaluate, report

    class ZeroBaseline(ControlMean):
        family = "zero_baseline"
        label = "Zero effect"
        colour = "#123456"

    monkeypatch.setattr(registry, "FAMILIES", dict(registry.FAMILIES))
    registry.register(ZeroBaseline)
    config = sbconfig.packaged_defaults()
    config["models"]["zero"] = {"family": "zero_baseline"}  # its config block
    config["experiments"]["default"]["models"] += ["zero", "replicate"]
    config["models"]["replicate"] = {"family": "replicate"}
    sbconfig.validate(config)
    assert registry.card("zero_baseline") == {"role": "baseline", "label": "Zero effect",
                                              "colour": "#123456", "has_masks": False,
                                              "has_likelihood": False}
    paths = []
    for model, family, value in (("sams_vae", "sams_vae", 0.7), ("zero", "zero_baseline", 0.5),
                                 ("replicate", "replicate", 0.9)):
        paths.append(tmp_path / f"{model}.tsv")
        sbio.write_tsv(pd.DataFrame({"experiment": "default", "dataset": "data", "model": model,
                                     "family": family, "split": "random", "seed": 0,
                                     "metric": "ate_pearson", "subset": "test",
                                     "value": [value]}), paths[-1])
    table = evaluate.aggregate([str(p) for p in paths], str(tmp_path / "metrics.tsv"))
    norm = table.set_index("model")["normalised"]
    # the new baseline is the normalised scores' 0: (0.7 - 0.5) / (0.9 - 0.5)
    assert norm["zero"] == 0.0 and norm["sams_vae"] == pytest.approx(0.5)
    board = report.leaderboard(table)
    row = board[(board["model"] == "zero") & (board["metric"] == "ate_pearson")].iloc[0]
    assert row["mean"] == 0.5 and row["normalised_mean"] == 0.0
    # the ceiling is never the best; the new baseline is a contender
    best = board[(board["metric"] == "ate_pearson") & board["best"]]
    assert list(best["model"]) == ["sams_vae"]


def test_a_metric_declares_its_direction_and_place_in_its_entry(monkeypatch):
    from samsbench import metrics
    from samsbench.stages import report

    monkeypatch.setitem(metrics.METRICS, "max_abs_error", metrics.Metric(
        lambda p, t, _: float(np.abs(p - t).max()), lower_is_better=True, leaderboard=99,
        score_table=99))
    assert metrics.lower_is_better("max_abs_error") and not metrics.lower_is_better("ate_r2")
    assert report.leaderboard_metrics()[-1] == ("max_abs_error", "test")
    assert report.leaderboard_metrics()[0] == ("test_iwelbo", "test")
    assert metrics.score_table_metrics()[-1] == "max_abs_error"
    assert metrics.score_table_metrics()[0] == "pearson_delta"  # the table's sort key


def test_defaults_are_the_families_own():
    # defaults.yaml's model block states the paper's constants; each equals the default of
    # every family dataclass that declares the key, and every key the schema types is declared
    import dataclasses

    import yaml

    from samsbench import config as sbconfig
    from samsbench import models as registry

    declared = {}
    for family, cls in registry.FAMILIES.items():
        for field in dataclasses.fields(cls.Hyperparameters):
            declared.setdefault(field.name, {})[family] = field.default
    stated = yaml.safe_load((PACKAGE / "defaults.yaml").read_text())["model_defaults"]
    for key, value in stated.items():
        assert key in declared, f"defaults.yaml: {key} is no family's hyperparameter"
        differ = {f: d for f, d in declared[key].items() if d != value}
        assert not differ, f"defaults.yaml: {key}: {value} but the dataclasses say {differ}"
    typed = sbconfig.load_schema()["$defs"]["hyperparameters"]["properties"]
    assert set(typed) - {"family"} <= set(declared), set(typed) - set(declared)
    for key, spec in typed.items():
        assert "default" not in spec, f"schema: {key}: the default belongs to the dataclass"
