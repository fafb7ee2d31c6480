# Rust workspace: format, lint, tests.
CARGO ?= cargo
# The benchmark crates pull in aws-sdk-rds and sqlx (minutes to compile): kept out of lint and test.
RUST_EXCLUDE := --workspace --exclude token-bench --exclude peer-lambda

.PHONY: lint-rust test-rust bench
lint-rust:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy $(RUST_EXCLUDE) --all-targets -- -D warnings
	@# Docs are part of the product: broken links and missing docs fail the build.
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --quiet --no-deps $(RUST_EXCLUDE)

test-rust: ## Rust tests (unit, property, end-to-end against a real PostgreSQL, doc tests)
	@command -v cargo-nextest >/dev/null || { echo "cargo-nextest missing: install it with 'cargo install cargo-nextest --locked'"; exit 1; }
	@# The Lambda alone (its own feature set), as `cargo lambda watch` in the tests builds it.
	$(CARGO) build -p connection-test
	$(CARGO) nextest run $(RUST_EXCLUDE) --no-fail-fast
	$(CARGO) test $(RUST_EXCLUDE) --doc

bench: ## Token benchmark: this crate against aws-sdk-rds (criterion)
	$(CARGO) bench --bench token
