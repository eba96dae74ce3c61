# The two commands of the README: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The project accepts any torch 2.x; the local set-up pins the CPU build. On a machine whose pip
# would fetch a CUDA build, add TORCH_INDEX=https://download.pytorch.org/whl/cpu.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
CORES ?= 2

.PHONY: install run test browser test-cluster bench gpu-check lint clean

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

test: install browser
	$(BIN)/python -m pytest -q

# tests/test_workflow.py renders results/report.html in headless Chromium (the report is a
# JavaScript app); install Debian's chromium when running as root, else the test is skipped
# with that reason.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get install -y -q chromium >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; } || \
		echo "could not install chromium: the report's browser test will be skipped"; \
	else echo "no chromium and not root: the report's browser test will be skipped"; fi

bench: install
	$(BIN)/python bench/run_benchmarks.py

# On a machine with one CUDA GPU (install a CUDA build of torch first, e.g. TORCH_SPEC=torch
# without TORCH_INDEX): the gpu tests, then the speed table (docs/training_speed.md). Minutes.
gpu-check: install
	$(BIN)/python bench/gpu_check.py --out gpu_check.tsv

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
