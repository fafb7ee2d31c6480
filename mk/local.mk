# Local stack: a real PostgreSQL behind local stand-ins for STS, Secrets Manager, Parameter Store and RDS Proxy.
# State lives in .local/ (stack.env, secret.env, ca.pem, backend.env, serve.log, pid files).
LOCAL_DIR    := $(ROOT)/.local
LOCAL_CONFIG ?= $(ROOT)/rds-proxy-emulator/local-stack.toml
# LOCAL_PROFILE=release runs an optimised stand-in (slower to build; use it for benchmarks).
LOCAL_PROFILE ?= debug
EMULATOR     := $(TARGET_DIR)/$(LOCAL_PROFILE)/rds-proxy-emulator

.PHONY: local-up local-down local-status bench-pgbench

local-up: ## Start PostgreSQL + the STS / RDS Proxy stand-ins in the background; writes .local/stack.env
	@if [ -f "$(LOCAL_DIR)/stack.env" ] && [ -f "$(LOCAL_DIR)/serve.pid" ] && kill -0 "$$(cat "$(LOCAL_DIR)/serve.pid")" 2>/dev/null; then \
	  echo "local stack already running"; \
	  for exe in "$(EMULATOR)" "$(TARGET_DIR)"/*/rds-proxy-emulator; do [ -x "$$exe" ] && exec "$$exe" status --state-dir "$(LOCAL_DIR)"; done; \
	fi; \
	$(CARGO) build --quiet $(if $(filter release,$(LOCAL_PROFILE)),--release) -p rds-proxy-emulator --bin rds-proxy-emulator || exit 1; \
	mkdir -p "$(LOCAL_DIR)"; rm -f "$(LOCAL_DIR)/stack.env"; \
	cd "$(ROOT)" || exit 1; \
	# A simple command, not an && list: backgrounding a list forks a subshell that keeps \
	# this recipe's stdout open (so `make local-up | tee` would wait until local-down). \
	nohup "$(EMULATOR)" serve --config "$(LOCAL_CONFIG)" --state-dir "$(LOCAL_DIR)" \
	  >"$(LOCAL_DIR)/serve.log" 2>&1 </dev/null & pid=$$!; \
	for i in $$(seq 1 600); do \
	  [ -f "$(LOCAL_DIR)/stack.env" ] && break; \
	  if ! kill -0 $$pid 2>/dev/null; then echo "local stack failed to start:"; tail -n 5 "$(LOCAL_DIR)/serve.log"; exit 1; fi; \
	  sleep 0.1; \
	done; \
	[ -f "$(LOCAL_DIR)/stack.env" ] || { echo "local stack not ready after 60 s; see $(LOCAL_DIR)/serve.log"; exit 1; }; \
	"$(EMULATOR)" status --state-dir "$(LOCAL_DIR)"

local-status: ## Show the running local stack (endpoints, how to connect)
	@if [ -x "$(EMULATOR)" ]; then "$(EMULATOR)" status --state-dir "$(LOCAL_DIR)"; else echo "local stack: not running"; exit 3; fi

# Stops `serve` (SIGTERM: it stops PostgreSQL and removes its files); if it died without
# cleaning up, stops the PostgreSQL servers it recorded (writer and readers, one pid a
# line) and removes their directory. A pid is only
# signalled if /proc says it is still the program we started.
local-down: ## Stop the local stack and remove .local
	@stop() { pid=$$1; name=$$2; sig=$$3; \
	  [ -n "$$pid" ] && [ -r /proc/$$pid/cmdline ] && tr '\0' ' ' </proc/$$pid/cmdline | grep -q "$$name" || return 0; \
	  kill -$$sig $$pid 2>/dev/null; \
	  for i in $$(seq 1 150); do kill -0 $$pid 2>/dev/null || return 0; sleep 0.1; done; \
	  echo "pid $$pid did not stop: SIGKILL"; kill -KILL $$pid 2>/dev/null; return 0; }; \
	if [ -d "$(LOCAL_DIR)" ]; then \
	  stop "$$(cat "$(LOCAL_DIR)/serve.pid" 2>/dev/null)" rds-proxy-emulator TERM; \
	  for pgpid in $$(cat "$(LOCAL_DIR)/postgres.pid" 2>/dev/null); do stop "$$pgpid" postgres INT; done; \
	  pgdir="$$(cat "$(LOCAL_DIR)/postgres.dir" 2>/dev/null)"; \
	  case "$$pgdir" in */rds-proxy-emulator-pg-*) rm -rf "$$pgdir";; esac; \
	  rm -rf "$(LOCAL_DIR)"; echo "local stack stopped"; \
	else echo "local stack: not running"; fi

# For the optimised figure: make local-down && make bench-pgbench LOCAL_PROFILE=release
# The token CLI (the rds-iam-auth-cli package, binary rds-iam-auth) is built with
# test-rust's package selection (mk/rust.mk): after `make test` it is already built.
bench-pgbench: local-up ## pgbench TPS direct to PostgreSQL vs through the RDS Proxy stand-in (same run)
	@EMULATOR="$(EMULATOR)" STATE_DIR="$(LOCAL_DIR)" CLI_SELECT="$(RUST_EXCLUDE) $(RUST_FEATURES)" "$(ROOT)/bench/pgbench-proxy"

# boto3 in the project's .venv: the stand-ins' third-party client check
# (rds-proxy-emulator/tests/boto3.rs), installed before the Rust tests, which fail (not
# skip) without it. 1.31 is the first botocore to read AWS_ENDPOINT_URL_<SERVICE>; any
# newer one already in .venv (checkov brings one) is kept.
EMULATOR_PY_STAMP := $(VENV)/.emulator-clients.stamp

$(EMULATOR_PY_STAMP):
	@command -v python3 >/dev/null || { echo "python3 not found: install python3 and python3-venv (apt-get install python3 python3-venv) for the boto3 check of the stand-ins"; exit 1; }
	@test -x $(VENV)/bin/python || python3 -m venv $(VENV) || \
		{ echo "could not create $(VENV): install python3-venv (apt-get install python3-venv)"; exit 1; }
	@$(VENV)/bin/python -c 'import boto3' 2>/dev/null || { echo "installing boto3 from PyPI into $(VENV)..."; \
		$(VENV)/bin/pip install --quiet --disable-pip-version-check 'boto3>=1.31,<2'; } || \
		{ echo "could not install boto3 from PyPI into $(VENV): check network access to PyPI (or run $(VENV)/bin/pip install boto3)"; exit 1; }
	@touch $@

test-rust: $(EMULATOR_PY_STAMP)
