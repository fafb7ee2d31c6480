# Every make target a user runs by hand and no test runs otherwise (bench, bench-connect,
# bench-pgbench, bench-proxy, invoke-local, demo, bench-lambda, bench-latency, fuzz, deploy
# and destroy with DRY_RUN=1), run in a short mode by `make test`, so that none of them
# breaks unnoticed. bench/smoke has the steps; SMOKE="step ..." runs some of them.
#
# Cost on the 2-core machine: about 1 minute once built, plus 20 to 50 s for bench-proxy
# (most of it starting its stack and initialising the pgbench tables). From a cold target
# dir, after test-rust, about 5.5 minutes (most of it builds nothing else in make test
# needs: aws-sdk-rds in the test profile ~1.5 min, the fuzz targets in the dev profile
# ~1.3 min, bench/peer-lambda ~1 min, the stand-in built alone as make local-up builds it
# ~0.7 min).
EXTRA_TESTS += test-smoke

.PHONY: test-smoke

test-smoke: lambda-tools ## Run every benchmark, fuzz, demo, deploy/destroy DRY_RUN=1 in a short mode (part of make test; SMOKE=steps)
	@MAKE="$(SUBMAKE)" CARGO="$(CARGO)" RUST_SELECT="$(RUST_EXCLUDE) $(RUST_FEATURES)" "$(ROOT)/bench/smoke"
