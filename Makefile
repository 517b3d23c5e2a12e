# fsseg developer entry points. `make test` works on a fresh clone: it installs first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.fsseg-installed

.PHONY: install test test-real lint bench demo clean

install: $(STAMP)

# torch 2.14.1 + torchvision 0.29.1 first (the known-good pair, taken from the local wheel
# cache on the dev/CI machines), then fsseg itself with its test extra.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

test: install
	$(PY) -m pytest -q -m "not slow"

# longer checks on the real data in ../shared/data (skipped when it is absent)
test-real: install
	$(PY) -m pytest -q -m slow

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: install
	$(PY) bench/run_all.py

# The README's first command: real photos (shipped by scikit-image) -> CAMs and overlays, offline.
DEMO ?= runs/demo
demo: install
	$(PY) examples/demo_photos.py $(DEMO)/photos
	$(VENV)/bin/fsseg clip-cam --images $(DEMO)/photos/cat --label cat --out $(DEMO)/cams-cat
	$(VENV)/bin/fsseg clip-cam --images $(DEMO)/photos/motorcycle --label motorcycle --out $(DEMO)/cams-motorcycle
	$(VENV)/bin/fsseg report $(DEMO)
	@echo "demo done: open $(DEMO)/report/index.html in a browser (overlays in $(DEMO)/cams-*/overlays/)"

# IMR-HSNet Table 1 through the stages (DATA=.../VOC2012 DEVICE=cuda [CHECKPOINTS=dir]); QUICK=1: synthetic, CPU
reproduce-table1: install
	QUICK="$(QUICK)" DATA="$(DATA)" DEVICE="$(DEVICE)" CHECKPOINTS="$(CHECKPOINTS)" OUT="$(OUT)" \
	  $(PY) examples/reproduce_table1.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
