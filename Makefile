# Backdrop developer commands. Everything a fresh machine needs is installed by these targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Lambda runs python3.12; so do the virtual environment and `sam build` (which needs python3.12 on PATH).
PY312 ?= $(firstword $(shell python3.12 -c 'import sys; print(sys.executable)' 2>/dev/null) $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12))
VENV := .venv
PY := $(VENV)/bin/python
SAM := $(VENV)/bin/sam
export SAM_CLI_TELEMETRY := 0
export PYTHONPATH := $(CURDIR)/local:$(CURDIR)/layers/core
N ?= 2000
# `make local PARAMETER_OVERRIDES='DailyRunBudget=5 ColorRules={"uploads/a/":"#FFFFFF"}'`: handed to
# the local stack through the environment, so JSON values reach it exactly as typed.
export PARAMETER_OVERRIDES

.PHONY: help venv lock build lint test browser test-fast demo local local-update chaos bench sam-local clean

help:
	@echo "make demo        set everything up and run the end-to-end demo (results in demo-output/)"
	@echo "make test        every test: lint, types, unit, integration, e2e, fault injection"
	@echo "make local       run the local stack in the foreground (Ctrl-C stops it)"
	@echo "make local-update PARAMETER_OVERRIDES='DailyRunBudget=50'  change parameters of the running local stack"
	@echo "make chaos N=2000  the fault-injection suite at a larger size"
	@echo "make bench       benchmarks: cold starts, warm invocations, throughput, copies, cost"
	@echo "make sam-local   every event through sam local invoke, one job through sam local start-api (Docker)"
	@echo "make build       sam build"
	@echo "make lock        lock files from pyproject.toml (uv.lock, requirements/*.txt, the layer's requirements)"

# The environments are installed from the hashed lock files only (`make lock` writes them from
# pyproject.toml), so a fresh clone gets exactly what CI tested. A changed lock recreates the
# environment: packages dropped from the lock must not linger.
DEV_LOCK := requirements/dev.txt
LINT_LOCK := requirements/lint.txt
LINT_VENV := .venv-lint
BOOTSTRAP_LOCK := requirements/bootstrap.txt
define make_venv
	@test -n "$(PY312)" || { echo "python3.12 is required (Lambda's runtime); install it or set PY312=/path/to/python3.12"; exit 1; }
	rm -rf $(1)
	$(PY312) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --require-hashes -r $(BOOTSTRAP_LOCK)
	$(1)/bin/python -m pip install --quiet --require-hashes -r $(2)
endef

$(VENV)/.installed: $(DEV_LOCK) $(BOOTSTRAP_LOCK)
	$(call make_venv,$(VENV),$(DEV_LOCK))
	@touch $@

# The project itself, editable and without dependencies (the lock has them), built by the locked
# hatchling: that installs the `backdrop` operator command as $(VENV)/bin/backdrop.
$(VENV)/.project: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install --quiet --no-deps --no-build-isolation --editable .
	@touch $@

# checkov pins packages older than the dev group's, so it has an environment of its own.
$(LINT_VENV)/.installed: $(LINT_LOCK) $(BOOTSTRAP_LOCK)
	$(call make_venv,$(LINT_VENV),$(LINT_LOCK))
	@touch $@

venv: $(VENV)/.project $(LINT_VENV)/.installed

# uv.lock and the hashed requirements files, from pyproject.toml. Versions already locked are kept
# while pyproject.toml allows them; `make lock LOCK_ARGS=--upgrade` (or --upgrade-package NAME) moves them.
lock: $(VENV)/.installed
	UV=$(VENV)/bin/uv UV_PYTHON=$(PY312) requirements/lock.sh $(LOCK_ARGS)

BUILD_INPUTS := template.yaml $(shell find functions layers -type f -not -path '*/__pycache__/*' 2>/dev/null)
.aws-sam/build/template.yaml: $(VENV)/.installed $(BUILD_INPUTS)
	PATH="$(dir $(PY312)):$$PATH" $(SAM) build --parallel
	@touch $@

build: .aws-sam/build/template.yaml

# Debian's chromium for the review page's browser test (apt-get, as root; exit 3 where it cannot).
browser:
	bash local/browser/install-chromium.sh

# Offline, every step: the lock check reads only pyproject.toml and the lock files, and checkov
# fetches nothing (skip-download in .checkov.yaml).
lint: venv
	@! grep -rnE '^(<<<<<<<|>>>>>>>)( |$$)' --exclude-dir=.venv --exclude-dir=$(LINT_VENV) --exclude-dir=.git --exclude-dir=.aws-sam . || { echo "merge conflict markers left in the files above"; exit 1; }
	UV=$(VENV)/bin/uv requirements/lock.sh --check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy layers/core/backdrop functions local benchmarks cli tests/unit/world.py
	$(VENV)/bin/cfn-lint --config-file .cfn-lint.yaml
	$(LINT_VENV)/bin/checkov --config-file .checkov.yaml

# The fault-injection suite mostly waits (list lag, reconciler passes, redeliveries), so it runs in a
# second pytest process beside the rest, followed there by the operator command's tests and five
# end-to-end files (which also wait on their local stacks), so that both lanes take about as long;
# that lane's output follows the rest's, and either failing fails.
SECOND_LANE := tests/chaos tests/cli $(addprefix tests/e2e/,test_reuse.py test_quality_gate.py test_renditions_on_stack.py test_events.py test_shop_integration.py)
test: venv build lint
	@mkdir -p .backdrop
	@bash local/browser/install-chromium.sh || test $$? -eq 3  # 3: none here; the browser test says so
	@$(PY) -m pytest -p no:cacheprovider $(SECOND_LANE) > .backdrop/chaos-suite.log 2>&1 & chaos=$$!; \
	$(PY) -m pytest $(addprefix --ignore=,$(SECOND_LANE)); rest=$$?; \
	wait $$chaos; chaos_status=$$?; \
	echo "== run beside the rest: $(SECOND_LANE)"; \
	cat .backdrop/chaos-suite.log; \
	test $$rest -eq 0 && test $$chaos_status -eq 0

test-fast: venv
	$(PY) -m pytest tests/unit

demo: venv build
	$(PY) -m backdrop_demo

local: venv build
	$(PY) -m backdrop_local

# A stack update of the running local stack: `make local-update PARAMETER_OVERRIDES='DailyRunBudget=50'`.
local-update: venv
	$(PY) -m backdrop_local.update

chaos: venv build
	BACKDROP_CHAOS_UPLOADS=$(N) $(PY) -m pytest tests/chaos -m slow -s -p no:cacheprovider

# Every event through `sam local invoke` and one job through `sam local start-api`, in Docker.
sam-local: venv build
	$(PY) -m backdrop_local.samcheck

# One BENCH line per figure on stdout (progress on stderr); bounded, and stops itself.
BENCH_TIMEOUT ?= 1200
bench: venv build
	timeout --kill-after=30 $(BENCH_TIMEOUT) $(PY) -m benchmarks.bench $(BENCH_ARGS)

clean:
	rm -rf .aws-sam .backdrop demo-output .pytest_cache .mypy_cache .ruff_cache
