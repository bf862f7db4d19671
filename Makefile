# One entry point for people and CI. `make demo` and `make test` each run the idempotent setup first.
.PHONY: setup demo demo-busy test lint bench docs

setup:
	scripts/setup

demo: setup
	scripts/demo

demo-busy: setup
	scripts/demo-busy

test: setup
	scripts/test

lint: setup
	scripts/lint

docs: setup
	.venv/bin/python scripts/gen_cli_reference.py --write

bench: setup
	.venv/bin/python bench/cli_startup.py
