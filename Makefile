# Top-level commands. Each part of the project keeps its targets in mk/<part>.mk;
# this file only ties them together. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))

-include mk/*.mk

.PHONY: help test lint
help: ## List the commands
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sort | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

test: lint test-rust $(EXTRA_TESTS) ## Run every test: Rust (unit, end-to-end, doc), CDK, lint
	@echo "make test: all suites passed"

lint: $(EXTRA_LINTS) lint-rust ## cargo fmt --check, clippy -D warnings, rustdoc -D warnings, tsc
