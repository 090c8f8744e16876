# Two commands do all set-up on a fresh machine:
#   make demo   -- create/reuse .venv, install ssl-mamba, run the phantom demo
#   make test   -- create/reuse .venv, install ssl-mamba[dev], run the test suite
# torch is pinned to 2.13.0 at set-up: that CPU wheel lies on the development machines' disk,
# while an unpinned torch with none installed would download a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) setup.py
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ssl-mamba demo

test: $(STAMP)
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) runs
