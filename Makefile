# retinad: two commands on a fresh Debian 12 machine, as root.
#   make run    set up and run the daemon in the foreground (embedded default config
#               unless /etc/retinad/retinad.toml exists; extra flags: make run ARGS="...")
#   make test   set up and run every test, plus ruff and mypy
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test setup setup-dev lint typecheck pytest check clean test-ansible

setup:
	bash scripts/setup.sh

setup-dev:
	bash scripts/setup.sh --dev

run: setup
	$(BIN)/retinad $(ARGS)

check: setup
	$(BIN)/retinad check $(ARGS)

lint: setup-dev
	$(BIN)/ruff check retinad tests
	$(BIN)/ruff format --check retinad tests

typecheck: setup-dev
	$(BIN)/mypy retinad

pytest: setup-dev
	$(BIN)/pytest tests $(PYTEST_ARGS)

test: lint typecheck pytest

# The Ansible role: ansible-lint (production), syntax check, molecule default (two
# instances) and alternative (TLS, auth, reload) on real systemd containers (~5 min).
test-ansible: setup-dev package
	bash scripts/test-ansible.sh

clean:
	rm -rf $(VENV) .venv-ansible .mypy_cache .ruff_cache .pytest_cache
