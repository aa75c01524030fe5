# Every target installs what it needs: apt packages when missing, then a venv from pyproject.toml.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := ffmpeg curl prometheus
STAMP := $(VENV)/.installed

.PHONY: demo test test-unit test-integration setup system-deps venv clean

demo: setup
	$(PY) scripts/demo.py

PYTEST = $(PY) -m pytest -q $(1); status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$status

test: setup
	@$(call PYTEST,)

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
	$(VENV)/bin/pip install -q -e '.[master,worker,cli,test]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) demo-run .pytest_cache
