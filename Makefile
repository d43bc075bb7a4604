# Two commands do everything on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PHOTOS ?= $(HOME)/.cache/lookalike/photos

.PHONY: serve test photos bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e '.[test,bench]'
	touch $@

serve: $(VENV)/.installed
	$(VENV)/bin/lookalike serve

photos:
	scripts/fetch-photos $(PHOTOS)

test: $(VENV)/.installed photos
	LOOKALIKE_TEST_PHOTOS=$(PHOTOS) $(VENV)/bin/python -m pytest

bench: $(VENV)/.installed
	scripts/fetch-photos $(PHOTOS) --with-mvtb
	LOOKALIKE_TEST_PHOTOS=$(PHOTOS) $(VENV)/bin/python bench/run_all.py
