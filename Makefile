# Top-level commands. Each part of the project keeps its targets in mk/<part>.mk;
# this file only ties them together. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
# The project's Python virtualenv: cfn-lint and checkov (mk/cdk.mk), cargo-lambda and zig
# (mk/lambda.mk). Defined here, before the includes, so every mk file sees the one value.
VENV := $(ROOT)/.venv
# Where cargo puts what it builds: CARGO_TARGET_DIR when set (one target dir shared by
# several checkouts), else the workspace's target/.
TARGET_DIR := $(or $(CARGO_TARGET_DIR),$(ROOT)/target)

-include mk/*.mk

.PHONY: help test lint
help: ## List the commands
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}' | LC_ALL=C sort

test: lint test-rust $(EXTRA_TESTS) ## Run every test: lint, Rust (unit, property, end-to-end, doc, then the 2-minute soak), CDK, test-smoke
	@echo "make test: all suites passed"

lint: $(EXTRA_LINTS) lint-rust ## Every lint: cargo fmt --check, clippy -D warnings, rustdoc -D warnings, tsc
