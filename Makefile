# retinad: two commands on a fresh Debian 12 machine, as root.
#   make run    set up and run the daemon in the foreground (embedded default config
#               unless /etc/retinad/retinad.toml exists; extra flags: make run ARGS="...")
#   make test   set up and run every test, plus ruff and mypy
#   make test-kernels  the kernel-tier tests inside Debian 12's 6.1 and Debian 11's 5.10
#               kernels under qemu, both at once (scripts/kernel-matrix/; image cached)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test setup setup-dev lint typecheck pytest check clean man package test-package test-ansible

setup:
	bash scripts/setup.sh

setup-dev:
	bash scripts/setup.sh --dev

run: setup
	$(BIN)/retinad $(ARGS)

check: setup
	$(BIN)/retinad check $(ARGS)

lint: setup-dev
	$(BIN)/ruff check retinad tests monitoring
	$(BIN)/ruff format --check retinad tests monitoring

typecheck: setup-dev
	$(BIN)/mypy retinad monitoring

pytest: setup-dev
	$(BIN)/pytest tests $(PYTEST_ARGS)

test: lint typecheck pytest

# man/retinad.8 and completions/{retinad.bash,_retinad} from the argparse definition
# (committed; tests/unit/test_cli_docs.py fails when they are stale)
man: setup-dev
	$(BIN)/python scripts/gen_cli_docs.py

# dist/retinad_<version>-<release>_all.deb and dist/retinad-<version>-<release>.noarch.rpm
# (RETINAD_RELEASE=N for another release of the same version).
package:
	bash packaging/build.sh dist

# The package tier (tests/package): builds both packages, boots systemd in Docker and in
# systemd-nspawn, installs, scrapes, reloads, upgrades, removes, purges; lintian; rpm.
# Installs what it needs itself (debootstrap, systemd-container, rpm, lintian).
test-package: setup-dev
	bash scripts/setup-package-tests.sh
	RETINAD_PACKAGE_TESTS=1 $(BIN)/pytest tests/package -p no:cacheprovider $(PYTEST_ARGS)

# The container image and the Kubernetes manifests alone (also part of `make test`):
# tests/deploy builds the image from this checkout (scripts/build-image.sh; the base
# rootfs is cached in /var/cache/retinad-test/image) and runs the RBAC tests against the
# real kube-apiserver with --authorization-mode=RBAC.
.PHONY: test-deploy test-image
test-deploy: setup-dev
	$(BIN)/pytest tests/deploy $(PYTEST_ARGS)

test-image: setup-dev
	$(BIN)/pytest tests/deploy/test_image.py $(PYTEST_ARGS)

# The kubelet tier (tests/deploy/node): deploy/kubernetes/ on a real one-node Kubernetes
# (kubelet + private containerd + bridge CNI + kube-controller-manager, tests/kube_node.py).
# Builds the kubelet and controller-manager first (scripts/build-kubelet.sh, cached; minutes
# cold), then the image from the deb. Collected only with RETINAD_KUBE_NODE_TESTS=1.
.PHONY: test-kube
test-kube: setup-dev
	bash scripts/build-kube-apiserver.sh >/dev/null
	bash scripts/build-kubelet.sh >/dev/null
	RETINAD_KUBE_NODE_TESTS=1 $(BIN)/pytest tests/deploy/node -p no:cacheprovider $(PYTEST_ARGS)

# The Ansible role: ansible-lint (production), syntax check, molecule default (two
# instances) and alternative (TLS, auth, reload) on real systemd containers (~5 min).
test-ansible: setup-dev package
	bash scripts/test-ansible.sh

# The kernel matrix: this suite inside qemu guests booting Debian's 6.1 and 5.10 kernels
# (scripts/kernel-matrix/run.sh; slow, not part of `make test`).
.PHONY: test-kernels
test-kernels: setup-dev
	bash scripts/kernel-matrix/run.sh

clean:
	rm -rf $(VENV) .venv-ansible .mypy_cache .ruff_cache .pytest_cache
