# Entry points for users and CI. `make help` lists them.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV ?= .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# Every directory under molecule/ with a molecule.yml is a scenario.
SCENARIOS := $(sort $(patsubst molecule/%/molecule.yml,%,$(wildcard molecule/*/molecule.yml)))
# Scenarios `make molecule s=<name>` runs but `make test` does not yet, each with the reason
# in a comment here (none at the moment).
SCENARIOS_NOT_IN_TEST :=
s ?=

.PHONY: help packages setup lock-tools lint testbed molecule molecule-all test test-app test-bench up down bench bench-smoke

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'
	@echo "  scenarios: $(SCENARIOS) (not in make test: $(SCENARIOS_NOT_IN_TEST))"

up: packages setup ## Deploy the whole stack into local containers and print its URLs (ha=1: the HA layout)
	.config/testbed/up $(if $(ha),inventories/local-ha/hosts.yml)

down: setup ## Remove everything `make up` (or `make up ha=1`) created
	ansible-playbook -i inventories/local-ha/hosts.yml playbooks/local_env.yml -e local_env_state=absent

packages: ## Install the Debian packages the control node needs (as root on Debian), or say which
	.config/testbed/ensure-packages

setup: $(VENV)/.installed ## Create .venv with the pinned control-node tools (fast when up to date)

$(VENV)/.installed: .config/requirements.lock
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check --require-hashes -r .config/requirements.lock
	touch $@

lock-tools: ## Re-pin .config/requirements.lock (hashes) from .config/requirements.in; needs PyPI
	python3 -m venv .cache/uv && .cache/uv/bin/pip install -q --disable-pip-version-check uv
	.cache/uv/bin/uv pip compile .config/requirements.in --generate-hashes --no-header --quiet \
		--python-version 3.11 --python-platform x86_64-manylinux_2_28 -o .config/requirements.lock

lint: setup ## yamllint, ansible-lint (profile production) and ruff
	yamllint --strict .
	ansible-lint
	ruff check .
	ruff format --check .
	.config/lint/check_argument_specs.py
	.config/lint/check_vault_encrypted.py
	pytest -q -p no:cacheprovider .config/lint/tests

testbed: packages setup ## Make sure Docker answers and the base image for test hosts exists
	.config/testbed/ensure-docker
	.config/testbed/build-image >/dev/null

molecule: testbed ## Run one scenario's full `molecule test`: make molecule s=common
	@test -n "$(s)" || { echo "usage: make molecule s=<scenario>  (one of: $(SCENARIOS))"; exit 2; }
	TESTBED_IMAGE=$$(.config/testbed/build-image) molecule test -s $(s)

molecule-all: testbed ## Run every Molecule scenario, MOLECULE_JOBS (3) slots, ha takes 2; logs in .cache/molecule-logs
	TESTBED_IMAGE=$$(.config/testbed/build-image) .config/testbed/molecule-all $(filter-out $(SCENARIOS_NOT_IN_TEST),$(SCENARIOS))

test-app: ## The app's tests against a real PostgreSQL, PgBouncer and Redis (installs them)
	.config/testbed/ensure-packages app
	@if [[ -f app/Makefile ]]; then $(MAKE) -C app test; else echo "app/ has no tests yet"; fi

test-bench: setup ## The benchmark runner's unit tests (parsing, statistics, report)
	pytest -q -p no:cacheprovider bench/tests

bench: packages setup ## The full benchmark against make up's stack (about 20 min); results in bench/results
	bench/run.py

bench-smoke: packages setup ## The benchmark's machinery against make up's stack in under 3 minutes, no thresholds
	bench/run.py --smoke

# bench-smoke's run is also a test of the default scenario (test_stack_10), against its hosts.
# The base image builds in the background (debootstrap: mostly network and disk, about 2
# minutes on a fresh machine) while lint and the app's and bench tests run (mostly CPU);
# every apt install on this host is done before, so the two never share apt's lock.
test: packages setup ## Everything CI runs: lint, app and bench tests, every scenario
	.config/testbed/ensure-packages app
	.config/testbed/ensure-docker
	mkdir -p .cache
	.config/testbed/build-image >.cache/build-image.log 2>&1 & image=$$!; \
	$(MAKE) --no-print-directory lint test-app test-bench || { kill $$image; exit 1; }; \
	wait $$image || { echo "building the base image failed:"; cat .cache/build-image.log; exit 1; }
	$(MAKE) --no-print-directory molecule-all
