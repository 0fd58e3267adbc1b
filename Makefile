# The two entry points of the README.  Both set up what a fresh Debian machine lacks.
#   make up    — set up and run labfleet (embedded NATS + PostgreSQL, every service, the UI)
#   make test  — set up and run the whole test suite
PY ?= python3
VENV ?= .venv

.PHONY: setup up demo test bench
setup:
	bash infra/setup.sh

up: setup
	$(VENV)/bin/labfleet up

demo: setup
	$(VENV)/bin/labfleet up --demo

test: setup
	$(VENV)/bin/python -m pytest -p no:cacheprovider -ra

bench: setup
	for b in bench/*.py; do $(VENV)/bin/python $$b || exit 1; done
