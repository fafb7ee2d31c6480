# Rust workspace: format, lint, tests.
CARGO ?= cargo
# The benchmark crates pull in aws-sdk-rds, and sqlx 0.8 with aws-config's default features
# (minutes to compile): kept out of lint and test.
RUST_EXCLUDE := --workspace --exclude token-bench --exclude peer-lambda
# The library's optional integrations are linted, documented and tested too.
RUST_FEATURES := --features rds-iam-auth/deadpool-postgres,rds-iam-auth/sqlx

.PHONY: lint-rust test-rust soak bench bench-connect
lint-rust: ## Rust lint: cargo fmt --check, clippy -D warnings, rustdoc -D warnings (with the deadpool-postgres and sqlx features)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy $(RUST_EXCLUDE) $(RUST_FEATURES) --all-targets -- -D warnings
	@# No two modules of a crate may use each other, directly or through others.
	python3 scripts/module-cycles.py rds-iam-auth/src rds-iam-auth-cli/src rds-iam-auth-proxy/src connection-test/src rds-proxy-emulator/src
	@# Docs are part of the product: broken links and missing docs fail the build.
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --quiet --no-deps $(RUST_EXCLUDE) $(RUST_FEATURES)

test-rust: ## Rust tests (unit, property, end-to-end against a real PostgreSQL, doc tests), then the 2-minute soak
	@command -v cargo-nextest >/dev/null || { echo "cargo-nextest missing: install it with 'cargo install cargo-nextest --locked'"; exit 1; }
	@# The Lambda alone (its own feature set), as `cargo lambda watch` in the tests builds it.
	$(CARGO) build -p connection-test
	$(CARGO) nextest run $(RUST_EXCLUDE) $(RUST_FEATURES) --no-fail-fast
	$(CARGO) test $(RUST_EXCLUDE) $(RUST_FEATURES) --doc
	@# Alone, after the rest: it measures what nothing else may disturb.
	@$(MAKE) --no-print-directory soak

SOAK_SECONDS ?= 120
# The two soaks run side by side (one stack each): the library's pool, and pgbench through
# the local auth proxy. Together they take SOAK_SECONDS, not twice that.
soak: ## Soaks (SOAK_SECONDS=120), side by side: the library's pool of 8 under 32 tasks + a connect every 250 ms (30 s credentials, 20 s tokens); a password database whose secret rotates every 15 s (deadpool + sqlx + connects); pgbench through the local auth proxy, new connection per transaction plus held sessions (20 s credentials, 10 s tokens)
	SOAK_SECONDS=$(SOAK_SECONDS) $(CARGO) nextest run -p rds-iam-auth -p rds-iam-auth-proxy --features rds-iam-auth/deadpool-postgres,rds-iam-auth/sqlx --test soak --run-ignored only --test-threads 3 --success-output final --failure-output final

bench: ## Token benchmark: this crate against aws-sdk-rds (criterion)
	$(CARGO) bench --bench token

bench-connect: ## Connect latency and pool throughput vs tokio-postgres-rustls / deadpool-postgres (same stand-in, same run)
	$(CARGO) bench --bench connect
