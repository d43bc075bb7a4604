# Two commands do everything on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PHOTOS ?= $(HOME)/.cache/lookalike/photos

.PHONY: serve test photos browser bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e '.[test,bench]'
	touch $@

serve: $(VENV)/.installed
	$(VENV)/bin/lookalike serve

photos:
	scripts/fetch-photos $(PHOTOS)

browser:
	scripts/install-chromium

test: $(VENV)/.installed photos browser
	LOOKALIKE_TEST_PHOTOS=$(PHOTOS) LOOKALIKE_TEST_BROWSER=$$(command -v chromium) $(VENV)/bin/python -m pytest

bench: $(VENV)/.installed
	scripts/fetch-photos $(PHOTOS) --with-mvtb
	LOOKALIKE_TEST_PHOTOS=$(PHOTOS) $(VENV)/bin/python bench/run_all.py
