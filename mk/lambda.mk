# The connection-test Lambda: cargo-lambda in the project's .venv (from PyPI, with
# zig for cross-compiling), the arm64 zip for deployment, and the local demo under
# `cargo lambda watch` against the local stack of mk/local.mk.
#
# VENV (the project's .venv) is defined in the Makefile; the cargo-lambda install has its
# own stamp (.venv/.cargo-lambda.stamp) so it never clashes with cfn-lint's rule in mk/cdk.mk.
LAMBDA_STAMP       := $(VENV)/.cargo-lambda.stamp
LAMBDA_PATH        := $(VENV)/bin:$(PATH)
LAMBDA_PKG         := connection-test
LAMBDA_TARGET      := aarch64-unknown-linux-gnu
LAMBDA_ZIP         := $(TARGET_DIR)/lambda/$(LAMBDA_PKG)/bootstrap.zip
# Port of `cargo lambda watch` (0: pick a free one on 127.0.0.1).
LAMBDA_PORT        ?= 0
# Seconds to wait for the function to answer one invocation (the first one may compile).
LAMBDA_INVOKE_WAIT ?= 900
# The local stack's state dir (mk/local.mk's LOCAL_DIR: stack.env is read from there).
LAMBDA_STACK_DIR    = $(or $(LOCAL_DIR),$(ROOT)/.local)

.PHONY: lambda-tools build demo invoke-local bench-lambda

$(LAMBDA_STAMP):
	@command -v python3 >/dev/null || { echo "python3 not found: install python3 and python3-venv (apt-get install python3 python3-venv)"; exit 1; }
	@test -x $(VENV)/bin/python || python3 -m venv $(VENV) || \
		{ echo "could not create $(VENV): install python3-venv (apt-get install python3-venv)"; exit 1; }
	@echo "installing cargo-lambda (and zig) from PyPI into $(VENV)..."
	@$(VENV)/bin/pip install --quiet --disable-pip-version-check cargo-lambda ziglang || \
		{ echo "could not install cargo-lambda from PyPI: check access to PyPI, or install it yourself ('pip install cargo-lambda ziglang', see cargo-lambda.info) and put it on PATH"; exit 1; }
	@touch $@

lambda-tools: $(LAMBDA_STAMP) ## Install cargo-lambda + zig into .venv (from PyPI) when missing
	@PATH="$(LAMBDA_PATH)" cargo lambda --version >/dev/null 2>&1 || \
		{ echo "cargo-lambda in $(VENV) does not run: rm $(LAMBDA_STAMP) and run 'make lambda-tools' again"; exit 1; }
	@PATH="$(LAMBDA_PATH)" python-zig version >/dev/null 2>&1 || command -v zig >/dev/null || \
		{ echo "zig missing (cargo-lambda cross-compiles with it): $(VENV)/bin/pip install ziglang"; exit 1; }

# cargo-lambda would add the Rust target itself; doing it here gives a clear message when
# rustup is missing. Zig cross-compiles the C in ring and aws-lc-sys (via aws-config).
build: lambda-tools ## Build the Lambda for arm64: target/lambda/connection-test/bootstrap.zip (prints its size)
	@command -v rustup >/dev/null && { rustup target list --installed | grep -qx $(LAMBDA_TARGET) || rustup target add $(LAMBDA_TARGET); } || \
		echo "rustup not found: make sure the Rust target $(LAMBDA_TARGET) is installed"
	@echo "building $(LAMBDA_PKG) for arm64 (release, zip)..."
	@start=$$(date +%s); cd $(ROOT) && PATH="$(LAMBDA_PATH)" cargo lambda build --release --arm64 --output-format zip -p $(LAMBDA_PKG) || exit 1; \
	  echo "built $(LAMBDA_ZIP) in $$(( $$(date +%s) - start )) s: $$(stat -c %s $(LAMBDA_ZIP) | numfmt --to=iec-i --suffix=B) ($$(stat -c %s $(LAMBDA_ZIP)) bytes)"

# The script behind `make demo` and `make invoke-local` (run as: bash -c "$LAMBDA_RUN_SH" x MODE).
# MODE=demo starts the local stack (and stops it afterwards if it started it); MODE=local
# needs a running one. Either way `cargo lambda watch` runs in its own process group on
# 127.0.0.1 and is stopped on exit, success or not.
define LAMBDA_RUN_SH
set -euo pipefail
mode=$$1
root="$(ROOT)"; export PATH="$(LAMBDA_PATH)"
t0=$$(date +%s)
since() { echo "$$(( $$(date +%s) - t0 )) s"; }
stack_env="$(LAMBDA_STACK_DIR)/stack.env"
watch_pid=""; started_stack=""; log="$$root/target/lambda-watch.log"
cleanup() {
  rc=$$?
  if [ -n "$$watch_pid" ] && kill -0 "$$watch_pid" 2>/dev/null; then
    echo "stopping cargo lambda watch..."
    kill -TERM -- "-$$watch_pid" 2>/dev/null || true
    for _ in $$(seq 1 50); do kill -0 "$$watch_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$$watch_pid" 2>/dev/null || true
  fi
  if [ -n "$$started_stack" ]; then
    echo "stopping local stack..."
    $(MAKE) --no-print-directory -C "$$root" local-down || true
  fi
  exit $$rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
if [ "$$mode" = demo ]; then
  serve_pid=$$(cat "$(LAMBDA_STACK_DIR)/serve.pid" 2>/dev/null || true)
  if [ -f "$$stack_env" ] && [ -n "$$serve_pid" ] && kill -0 "$$serve_pid" 2>/dev/null; then
    echo "local stack already running: using it (it stays up afterwards)"
  else
    echo "starting local stack (first run compiles the emulator)..."
    started_stack=1
    $(MAKE) --no-print-directory -C "$$root" local-up
    echo "local stack up after $$(since)"
  fi
fi
[ -f "$$stack_env" ] || { echo "no local stack: start it with 'make local-up' (or run 'make demo')"; exit 1; }
echo "building function (debug, as cargo lambda watch runs it)..."
b0=$$(date +%s)
cargo build --quiet -p $(LAMBDA_PKG) --bin $(LAMBDA_PKG)
echo "function built in $$(( $$(date +%s) - b0 )) s"
port=$(LAMBDA_PORT)
if [ "$$port" = 0 ]; then
  port=$$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
echo "starting cargo lambda watch on 127.0.0.1:$$port (log: $$log)..."
mkdir -p "$$root/target"
(
  set -a; . "$$stack_env"; set +a
  cd "$$root"
  exec setsid cargo lambda watch --ignore-changes -p $(LAMBDA_PKG) --bin $(LAMBDA_PKG) \
    --invoke-address 127.0.0.1 --invoke-port "$$port"
) >"$$log" 2>&1 </dev/null &
watch_pid=$$!
for _ in $$(seq 1 600); do
  python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.5).close()' "$$port" 2>/dev/null && break
  kill -0 "$$watch_pid" 2>/dev/null || { echo "cargo lambda watch exited:"; tail -n 20 "$$log"; exit 1; }
  sleep 0.2
done
echo "invoking: cargo lambda invoke $(LAMBDA_PKG) --data-ascii '{}'"
i0=$$(date +%s%N)
set +e
out=$$(timeout $(LAMBDA_INVOKE_WAIT) cargo lambda invoke $(LAMBDA_PKG) --invoke-address 127.0.0.1 --invoke-port "$$port" --data-ascii '{}' 2>&1)
rc=$$?
set -e
echo "response ($$(( ($$(date +%s%N) - i0) / 1000000 )) ms):"
echo "$$out"
expected='{"statusCode":200,"headers":{"Content-Type":"application/json"},"body":"Database connection was successful!"}'
got=$$(printf '%s' "$$out" | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin), separators=(",", ":")))' 2>/dev/null || true)
if [ "$$rc" -eq 0 ] && [ "$$got" = "$$expected" ]; then
  echo "$$mode: OK, the function connected through the local RDS Proxy stand-in (total $$(since))"
else
  echo "$$mode: FAILED (invoke exit $$rc); function log, last lines of $$log:"
  tail -n 15 "$$log"
  exit 1
fi
endef
export LAMBDA_RUN_SH

demo: lambda-tools ## Start the local stack, run the Lambda under cargo lambda watch, invoke it, stop everything
	@bash -c "$$LAMBDA_RUN_SH" lambda-run demo

invoke-local: lambda-tools ## Invoke the Lambda (under cargo lambda watch) against an already running `make local-up` stack
	@bash -c "$$LAMBDA_RUN_SH" lambda-run local

bench-lambda: lambda-tools ## Cold start + peak RSS: the Lambda vs the Python reference (20+ runs), and the zip size
	@MAKE="$(MAKE)" "$(ROOT)/bench/lambda"

# `make test` runs tests/watch.rs (cargo lambda watch): have cargo-lambda installed first.
test-rust: lambda-tools
