# Latency benchmark: connection-test against an awslabs-style Rust peer (bench/peer-lambda),
# through delay relays in front of the local stack's STS and proxy. `make test` runs it in a
# short mode only (mk/smoke.mk).
# Settings by environment: STS_DELAY_MS (10), PROXY_DELAY_MS (1), RUNS (20), WARM (5),
# GAP_MS (20), SKIP_ZIP=1 (no arm64 builds), BUILD_PROFILE=debug (debug builds; release by default).
.PHONY: bench-latency

# make itself, for scripts that run make targets. Through a variable of its own, so that
# `make -n` prints these recipes instead of running them (make runs any recipe line that
# names $(MAKE) directly, even under -n).
SUBMAKE = $(MAKE)

bench-latency: lambda-tools ## Latency: connection-test vs an awslabs-style Rust peer (cold, warm, RSS, zip, critical path)
	@[ -n "$$SKIP_ZIP" ] || ! command -v rustup >/dev/null || rustup target list --installed | grep -qx $(LAMBDA_TARGET) || rustup target add $(LAMBDA_TARGET) || true
	@PATH="$(LAMBDA_PATH)" MAKE="$(SUBMAKE)" "$(ROOT)/bench/latency/run"
