# Two commands matter: `make book` (the rendered book at _build/html/index.html)
# and `make test`. Both bootstrap .venv first, from nothing if need be.
#
#   make book                     demo profile on SynFER (the default)
#   make book PROFILE=paper DATA_ROOT=/data/fer ONLY='book/manet/*'
#   make book PROFILE=paper DATA_ROOT=/data/fer DRY_RUN=1   the whole paper path in minutes, on a CPU
#   make test                     pytest: unit tests + nbval over book/ (smoke profile)
#   make bench                    every benchmarks/bench_*.py -> _build/bench
#   make lab                      JupyterLab on book/ with this environment's kernel
#   make clean / make distclean   remove _build / also .venv and runs/
#   make book VENV=$CONDA_PREFIX  use an activated conda env instead of .venv

SHELL := /bin/bash
.DEFAULT_GOAL := book

PYTHON    ?= python3
# VENV=$CONDA_PREFIX reuses an activated conda env (see environment.yml).
VENV      ?= .venv
VPY       := $(VENV)/bin/python
STAMP     := $(VENV)/.fer-installed
PROFILE   ?= demo
DATA_ROOT ?=
ONLY      ?=
DRY_RUN   ?=
BOOK_ARGS ?=
# notebooks executed at once by `make book` (each chapter's pages in order; each kernel gets
# cores / JOBS threads): 2 took the demo book from 60 to 41 min on a 2-core machine (2026-12-03)
JOBS      ?= 2
PYTEST_ARGS ?=
BENCH_OUT ?= _build/bench
LAB_ARGS  ?=

.PHONY: book test bench lab clean distclean venv $(VENV)

# `make .venv` (or `make venv`) creates the environment; it is refreshed
# whenever pyproject.toml is newer than the stamp file inside it.
$(VENV) venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(VPY) || { echo ">> creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	$(VPY) -m pip install --disable-pip-version-check --upgrade pip
	$(VPY) -m pip install --disable-pip-version-check -e ".[book,test]"
	@$(VPY) -c 'import torch, torchvision; \
	b = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]]); \
	keep = torchvision.ops.nms(b, torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist(); \
	assert keep == [0, 2], keep; \
	print(">> torch", torch.__version__, "/ torchvision", torchvision.__version__, "ops OK")' \
	|| { echo "ERROR: torchvision.ops.nms does not run in $(VENV): torch and torchvision must be the matching pair pinned in pyproject.toml. Fix the pins, then run 'make distclean' and retry." >&2; exit 1; }
	@touch $@

book: $(STAMP)
	$(VPY) -m fer.book --profile $(PROFILE) \
		$(if $(DATA_ROOT),--data-root '$(DATA_ROOT)') \
		$(if $(ONLY),--only '$(ONLY)') $(if $(DEVICE),--device '$(DEVICE)') \
		$(if $(filter 1 yes true,$(DRY_RUN)),--dry-run) --jobs $(JOBS) $(BOOK_ARGS)

test: $(STAMP)
	$(VPY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	@set -e; shopt -s nullglob; scripts=(benchmarks/bench_*.py); \
	if [ $${#scripts[@]} -eq 0 ]; then echo "no benchmarks/bench_*.py to run"; exit 0; fi; \
	for f in "$${scripts[@]}"; do \
		echo ">> $$f --out $(BENCH_OUT)"; \
		$(VPY) "$$f" --out $(BENCH_OUT); \
	done

# JupyterLab on the book's notebooks. Its "Python 3" kernel is $(VPY), the environment
# `make book` and `make test` use; the `lab` extra (jupyterlab) is installed on first use.
# LAB_ARGS reaches jupyter lab (e.g. LAB_ARGS='--no-browser --port 8890').
lab: $(STAMP)
	@$(VPY) -c 'import jupyterlab' 2>/dev/null || \
		$(VPY) -m pip install --disable-pip-version-check -e ".[book,test,lab]"
	$(VPY) -m jupyterlab book $(LAB_ARGS)

clean:
	rm -rf _build

distclean: clean
	rm -rf .venv runs
