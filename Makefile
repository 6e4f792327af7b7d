# Two entry points, each creating the environment from the project's own files when it is missing:
#   make book   execute every chapter for the embedded models and build the HTML into _build/html
#   make test   check the code with ruff (pyproject.toml), then run the test suite (CPU, minutes)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# No network is expected at run time: fail fast instead of retrying the hub.
export HF_HUB_OFFLINE := 1

.PHONY: book test clean

book: $(VENV)/.book-deps
	$(BIN)/python -m vlmlib book

test: $(VENV)/.test-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

$(VENV)/.book-deps: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

$(VENV)/.test-deps: $(VENV)/.book-deps requirements-test.txt .ci/install-chromium.sh
	$(BIN)/python -m pip install -q -r requirements.txt -r requirements-test.txt
	bash .ci/install-chromium.sh  # the browser that tests/test_browser.py reads the book with (root + apt only)
	touch $@

clean:
	rm -rf _build book/paligemma book/qwen2vl
