# The local auth proxy (rds-iam-auth-proxy): the clients in other languages its end-to-end
# tests run (rds-iam-auth-proxy/tests/languages.rs), and its benchmark.
#
# The clients are installed here on first use, each once (a stamp per install): psycopg 3
# into the project's .venv (from PyPI, pinned in tests/clients/requirements.txt),
# node-postgres into tests/clients/node/node_modules (npm ci, redone when package.json or
# package-lock.json change), and a JRE with the PostgreSQL JDBC driver from Debian's
# packages (apt-get, as root; otherwise a one-line message with the command). `make test`
# installs them before the Rust tests, which fail (not skip) when one is missing.
PROXY_CLIENTS_DIR := $(ROOT)/rds-iam-auth-proxy/tests/clients
PROXY_PY_REQ      := $(PROXY_CLIENTS_DIR)/requirements.txt
PROXY_PY_STAMP    := $(VENV)/.proxy-clients.stamp
PROXY_NODE_DIR    := $(PROXY_CLIENTS_DIR)/node
PROXY_NODE_STAMP  := $(PROXY_NODE_DIR)/node_modules/.npm-ci.stamp
# Where Debian's libpostgresql-jdbc-java puts the driver (the test reads PGJDBC_JAR for
# another place).
PROXY_JDBC_JAR    := /usr/share/java/postgresql.jar
PROXY_JAVA_PKGS   := default-jre-headless libpostgresql-jdbc-java

.PHONY: proxy-clients proxy-clients-java test-proxy-langs bench-proxy

$(PROXY_PY_STAMP): $(PROXY_PY_REQ)
	@command -v python3 >/dev/null || { echo "python3 not found: install python3 and python3-venv (apt-get install python3 python3-venv) for the proxy's Python client"; exit 1; }
	@test -x $(VENV)/bin/python || python3 -m venv $(VENV) || \
		{ echo "could not create $(VENV): install python3-venv (apt-get install python3-venv)"; exit 1; }
	@$(VENV)/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
		{ echo "psycopg 3.3 needs Python 3.10+, $(VENV) has $$($(VENV)/bin/python --version): remove $(VENV) and create it with a newer python3"; exit 1; }
	@echo "installing psycopg from PyPI into $(VENV)..."
	@$(VENV)/bin/pip install --quiet --disable-pip-version-check -r $(PROXY_PY_REQ) || \
		{ echo "could not install psycopg from PyPI into $(VENV): check network access to PyPI (or run $(VENV)/bin/pip install -r $(PROXY_PY_REQ))"; exit 1; }
	@touch $@

$(PROXY_NODE_STAMP): $(PROXY_NODE_DIR)/package.json $(PROXY_NODE_DIR)/package-lock.json
	@command -v npm >/dev/null || { echo "npm not found: install Node.js 16+ with npm (apt-get install nodejs npm, or nodejs.org) for the proxy's Node.js client"; exit 1; }
	@echo "installing node-postgres from npm into $(PROXY_NODE_DIR)/node_modules..."
	@cd $(PROXY_NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error || \
		{ echo "could not install node-postgres (npm ci in $(PROXY_NODE_DIR)): check network access to the npm registry"; exit 1; }
	@touch $@

# Nothing to stamp: both are system files, checked in a few milliseconds. Installed with
# apt-get when running as root on Debian or Ubuntu (measured on the 2-core machine: 1.8 s
# with a JRE already there; 16 s for the JRE, the driver and 13 libraries they need,
# downloads included); otherwise the message names the packages.
proxy-clients-java:
	@if ! command -v java >/dev/null || [ ! -f $(PROXY_JDBC_JAR) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing a JRE and the PostgreSQL JDBC driver (apt-get install $(PROXY_JAVA_PKGS))..."; \
	    apt_install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(PROXY_JAVA_PKGS) >/dev/null; }; \
	    apt_install || { apt-get update -qq >/dev/null && apt_install; } || \
	      { echo "could not install $(PROXY_JAVA_PKGS) with apt-get: check access to the Debian mirror, or install a JRE 11+ and the PostgreSQL JDBC driver (PGJDBC_JAR=path/to/postgresql.jar)"; exit 1; }; \
	  else \
	    echo "the proxy's Java client needs a JRE 11+ and the PostgreSQL JDBC driver at $(PROXY_JDBC_JAR): sudo apt-get install $(PROXY_JAVA_PKGS)"; exit 1; \
	  fi; \
	fi
	@java --source 11 --version >/dev/null 2>&1 || \
		{ echo "$$(java -version 2>&1 | head -n1) cannot run a single-file program (java Client.java needs Java 11+): apt-get install $(PROXY_JAVA_PKGS)"; exit 1; }

proxy-clients: $(PROXY_PY_STAMP) $(PROXY_NODE_STAMP) proxy-clients-java ## Install the proxy's test clients: psycopg 3 (.venv), node-postgres (npm ci), JRE + JDBC driver (apt)

test-proxy-langs: proxy-clients ## The proxy's end-to-end tests with Python, Node.js and Java clients alone
	$(CARGO) nextest run -p rds-iam-auth-proxy --test languages --no-fail-fast

# `make test` runs tests/languages.rs: have its clients installed first.
test-rust: proxy-clients

# Release builds of the proxy, its timing program and the stand-in, on a stack of its own
# (target/bench-proxy/stack). Settings by environment: ROUNDS (3), SECONDS_EACH (10),
# CLIENTS (4), CONNECTS (200), MEM_STEPS ("100 1000"), BUILD_PROFILE and LOCAL_PROFILE
# (release). The token CLI is built with test-rust's package selection (mk/rust.mk): after
# `make test` it is already built. `make test` runs it in a short mode only (mk/smoke.mk).
bench-proxy: ## Auth proxy vs direct TLS: pgbench tps ratio and added latency, connect overhead, RSS per idle connection
	@MAKE="$(SUBMAKE)" CARGO="$(CARGO)" CLI_SELECT="$(RUST_EXCLUDE) $(RUST_FEATURES)" "$(ROOT)/bench/proxy/run"
