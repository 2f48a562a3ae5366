# Shortcuts over the two commands of the README. `make bench` runs every benchmark under
# bench/ and prints one table (bench/README.md); `make bench-quick` does fewer repetitions.
PYTHON := .venv/bin/python

.PHONY: setup test demo bench bench-quick

setup:
	python3 bootstrap.py setup

test:
	python3 bootstrap.py test

demo:
	python3 bootstrap.py demo

bench: setup
	$(PYTHON) bench/run_all.py

bench-quick: setup
	$(PYTHON) bench/run_all.py --quick
