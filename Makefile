# The README's commands. `make demo` and `make test` work on a fresh machine with only Python.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
QNET   := $(VENV)/bin/qnet
STAMP  := $(VENV)/.installed
MYPY_ROOMS := channel distill kms configfile
export DEBIAN_FRONTEND := noninteractive

.PHONY: help install system-deps demo test lint format bench hil reliability clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "qnet needs Python >= 3.11, found " + sys.version.split()[0])'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install qnet with its test tools

system-deps:  ## Debian packages for the real servers the tests start (mosquitto, VictoriaMetrics, InfluxDB 1.x)
	@if command -v mosquitto >/dev/null && command -v victoria-metrics >/dev/null && command -v influxd >/dev/null; then \
		echo "system-deps: mosquitto, victoria-metrics and influxd already installed"; \
	else \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		$$SUDO apt-get install -y -qq mosquitto victoria-metrics influxdb >/dev/null && \
		echo "system-deps: installed mosquitto, victoria-metrics, influxdb"; \
	fi

demo: $(STAMP)  ## run the main job on the embedded default
	$(QNET) demo

test: $(STAMP) system-deps lint  ## install everything and run every test: the unit/integration suite and the HIL suite both always run
	@unit=0; $(PY) -m pytest || unit=$$?; \
	hil=0; $(MAKE) --no-print-directory hil HIL_ARGS= || hil=$$?; \
	echo "make test: unit/integration suite exit $$unit, HIL suite exit $$hil"; \
	[ $$unit -eq 0 ] && [ $$hil -eq 0 ]

lint: $(STAMP)  ## ruff lint and format check; mypy --strict on the rooms it covers so far
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy $(MYPY_ROOMS)

format: $(STAMP)  ## apply ruff's formatting and safe fixes
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP) system-deps  ## performance benchmarks against baselines timed in the same run
	$(PY) -m benchmarks

hil: $(STAMP) system-deps  ## hardware-in-the-loop suite (default: the emulated testbed); JUnit + report in reports/hil
	$(PY) -m pytest hil_tests --junitxml=reports/hil/junit.xml --hil-report reports/hil $(HIL_ARGS)

reliability: $(STAMP) system-deps  ## telemetry outage/kill run (about 2 min); rewrites the figures in docs/RELIABILITY.md
	$(PY) -m benchmarks.reliability

clean:  ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
