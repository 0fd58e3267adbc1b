# The two entry points of the README.  Both set up what a fresh Debian machine lacks.
#   make up    — set up and run labfleet (embedded NATS + PostgreSQL, every service, the UI,
#                and the emulated lab registered)
#   make test  — set up and run the whole test suite
PY ?= python3
VENV ?= .venv

.PHONY: setup up run test bench
setup:
	bash infra/setup.sh

# the stack with a small emulated lab registered (the lab needs root; without it
# labfleet runs on its own and says why the lab is missing)
up: setup
	$(VENV)/bin/labfleet up --demo

# the stack alone, no lab
run: setup
	$(VENV)/bin/labfleet up

test: setup
	$(VENV)/bin/python -m pytest -p no:cacheprovider -ra

bench: setup
	for b in bench/*.py; do $(VENV)/bin/python $$b || exit 1; done
