# Set-up is two commands: `make demo` and `make test`. Each creates .venv when it is missing,
# installs the CPU build of torch first (so the range in pyproject.toml is already met and pip
# never pulls a multi-GB CUDA build), then the package with its extras. `make test` also
# installs Debian's chromium for the browser tests when run as root (as CI is); elsewhere those
# tests skip until `sudo apt-get install chromium` has been run once.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint format clean browser

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,serve,web-test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/polyvis demo

# A failed install only means the browser tests skip, so it does not stop the suite.
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium for the browser tests (apt-get)"; \
		( apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq chromium >/dev/null ) \
		|| echo "make: chromium did not install; the browser tests will skip"; \
	else echo "make: no /usr/bin/chromium, so the browser tests skip (sudo apt-get install chromium)"; fi

test: $(STAMP) browser
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
