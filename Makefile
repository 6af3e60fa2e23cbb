# vnet-testbed: `sudo make demo` and `sudo make test` are the whole set-up on a fresh Debian 12 machine.
SHELL := /bin/bash
PY := .venv/bin/python
APT_PKGS := openvswitch-switch mininet iperf3 tcpdump ethtool iputils-ping iproute2 python3-venv python3-yaml python3-pip
VENV_STAMP := .venv/.installed
PYTEST_ARGS ?=

.PHONY: setup apt venv ovs demo test unit lint e2e bench clean check-root help

help:
	@echo "sudo make demo   - install what is missing, run the main experiment, write results/"
	@echo "sudo make test   - install what is missing, lint, run all tests (unit + end-to-end)"
	@echo "make unit        - lint, then the pure unit tests (no root, no Mininet)"
	@echo "make lint        - ruff over the tree, mypy (strict) on the pure core (setup.cfg [mypy])"
	@echo "sudo make bench  - vrouter core, fabric, throughput and flow setup benchmarks"
	@echo "sudo make clean  - remove leftovers of testbed runs (scoped, never global)"

check-root:
	@if [ "$$(id -u)" != 0 ]; then echo "error: this target installs packages and builds namespaces: run it with sudo" >&2; exit 1; fi

setup: check-root apt venv ovs

# Install only the Debian packages that are missing, so a second run touches nothing.
apt: check-root
	@missing=""; for p in $(APT_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "==> installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	else echo "==> Debian packages present"; fi

venv: $(VENV_STAMP)

# System python (3.11 + Debian's Mininet) with a venv that sees its site-packages.
$(VENV_STAMP): requirements.txt setup.cfg setup.py
	@test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages .venv
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	@if [ "$$(id -u)" = 0 ]; then ln -sf "$(CURDIR)/.venv/bin/testbed" /usr/local/bin/testbed; fi
	@touch $@

ovs: check-root
	@if ! ovs-vsctl --timeout=3 show >/dev/null 2>&1; then \
	  echo "==> starting Open vSwitch daemons"; \
	  /usr/share/openvswitch/scripts/ovs-ctl start --system-id=random 2>&1 | grep -v ulimit || true; \
	fi
	@ovs-vsctl --timeout=5 show >/dev/null

# The main experiment (proactive vs reactive flow setup) on the default topology -> results/proactive_flow/
demo: setup
	$(PY) -m experiments.proactive_flow

# Lint runs first (seconds) so a finding fails the run before the slow end-to-end tests; a lint
# or test failure makes the target, and so .ci/run, exit non-zero.
test: setup
	@$(MAKE) --no-print-directory lint
	$(PY) -m pytest tests $(PYTEST_ARGS)

unit: lint
	$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

# Both tools are pinned in requirements.txt; mypy takes its files and strictness from setup.cfg.
lint:
	@test -x $(PY) || { echo "run 'sudo make setup' first"; exit 1; }
	@$(PY) -m ruff --version >/dev/null 2>&1 && $(PY) -m mypy --version >/dev/null 2>&1 || \
	  { echo "error: ruff or mypy missing from .venv (requirements.txt changed): run 'sudo make setup'" >&2; exit 1; }
	$(PY) -m ruff check .
	$(PY) -m mypy

e2e: setup
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

bench: setup
	$(PY) -m vrouter.bench
	$(PY) -m testbed.cli bench fabric
	$(PY) -m testbed.cli bench throughput
	$(PY) -m testbed.cli bench flowsetup

clean: check-root
	@if [ -x $(PY) ]; then $(PY) -m testbed.cli clean; fi
