# fsseg developer entry points. `make test` works on a fresh clone: it installs first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.fsseg-installed

.PHONY: install test test-real lint bench bench-quick demo clean reproduce-table1 reproduce-gfss reproduce-spino

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

# every benchmark at tiny sizes (seconds each; CI runs it so that none can rot): fails when one fails
bench-quick: install
	$(PY) bench/run_all.py --quick

# The README's first command: real photos (shipped by scikit-image) -> CAMs and overlays, then few-shot
# masks of the other motorcycle photo from one support whose mask clip-cam made (label supervision), offline.
DEMO ?= runs/demo
demo: install
	$(PY) examples/demo_photos.py $(DEMO)/photos
	$(VENV)/bin/fsseg clip-cam --images $(DEMO)/photos/cat --label cat --out $(DEMO)/cams-cat
	$(VENV)/bin/fsseg clip-cam --images $(DEMO)/photos/motorcycle --label motorcycle --out $(DEMO)/cams-motorcycle
	$(VENV)/bin/fsseg finetune-episode --support $(DEMO)/photos/motorcycle/motorcycle_left.png \
	  --support-masks $(DEMO)/cams-motorcycle --query $(DEMO)/photos/motorcycle/motorcycle_right.png \
	  --out $(DEMO)/fewshot-motorcycle
	$(VENV)/bin/fsseg report $(DEMO)
	@echo "demo done: open $(DEMO)/report/index.html in a browser (overlays in $(DEMO)/cams-*/overlays/ and $(DEMO)/fewshot-motorcycle/overlays/)"

# The seeds' headline experiments through the stages (DATA=... DEVICE=cuda; table1: CHECKPOINTS=dir);
# QUICK=1: the same chain on synthetic data with tiny models, on the CPU (CI runs these)
REPRODUCE_ENV = QUICK="$(QUICK)" DATA="$(DATA)" DEVICE="$(DEVICE)" CHECKPOINTS="$(CHECKPOINTS)" OUT="$(OUT)" \
	EPISODES="$(EPISODES)" TRAIN_SPLIT="$(TRAIN_SPLIT)" VAL_SPLIT="$(VAL_SPLIT)"
reproduce-table1 reproduce-gfss reproduce-spino: install
	$(REPRODUCE_ENV) $(PY) examples/reproduce.py $(@:reproduce-%=%)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
