# The two commands of the README: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The project accepts any torch 2.x; the local set-up pins the CPU build. On a machine whose pip
# would fetch a CUDA build, add TORCH_INDEX=https://download.pytorch.org/whl/cpu.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
CORES ?= 2

.PHONY: install run test test-cluster bench lint clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/snakemake --cores $(CORES) --workflow-profile workflow/profiles/default
	$(BIN)/snakemake --cores $(CORES) --workflow-profile workflow/profiles/default --report results/report.html
	@echo "Report: $(CURDIR)/results/report.html (open it in a browser; leaderboard and provenance on its home page)"

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python bench/run_benchmarks.py

lint: install
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check .

clean:
	rm -rf results .snakemake

# The Slurm profile against a real one-node Slurm that the test installs (Debian's slurm-wlm and
# munge, as root), starts and stops (tests/test_cluster.py, docs/cluster.md). Fails, rather than
# skips, when Slurm cannot be started.
test-cluster: install
	SAMSBENCH_REQUIRE_SLURM=1 $(BIN)/python -m pytest -q -rs -m cluster tests/test_cluster.py
