# Fuzzing the stand-ins' parsers of untrusted input (startup packet, client messages and
# the pinning watch, the proxy relay's framing of both streams of a session, the IAM token
# verifier, STS requests) with libFuzzer on the stable toolchain: the coverage
# instrumentation is rustc's sanitizer-coverage pass (stable -C flags), libFuzzer comes
# from the libfuzzer-sys crate (crates.io; needs a C++ compiler).
# Seeds: rds-proxy-emulator/fuzz/corpus/<target>/ (in git); what a run learns goes to
# rds-proxy-emulator/fuzz/work/<target>/, crashes to rds-proxy-emulator/fuzz/artifacts/.
FUZZ_DIR     := $(ROOT)/rds-proxy-emulator/fuzz
FUZZ_SECONDS ?= 60
# release (what a real fuzzing run wants) or dev (compiles faster; the smoke test's choice).
FUZZ_PROFILE ?= release
FUZZ_TARGETS ?= startup_packet client_messages token_verifier sts_request relay_frames server_frames
# Built for the host triple named explicitly, so the flags apply to the fuzzed code only
# (not to build scripts and proc macros, which run uninstrumented).
FUZZ_TRIPLE  := $(shell rustc -vV 2>/dev/null | sed -n 's/^host: //p')
# A target dir of its own (instrumented builds of the same crates), inside CARGO_TARGET_DIR
# when one is set for the workspace.
FUZZ_TARGET_DIR := $(if $(CARGO_TARGET_DIR),$(CARGO_TARGET_DIR)/fuzz,$(FUZZ_DIR)/target)
FUZZ_BIN     := $(FUZZ_TARGET_DIR)/$(FUZZ_TRIPLE)/$(if $(filter dev,$(FUZZ_PROFILE)),debug,$(FUZZ_PROFILE))
FUZZ_RUSTFLAGS := -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
  -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks

.PHONY: fuzz fuzz-build

fuzz-build:
	@command -v c++ >/dev/null || { echo "make fuzz: a C++ compiler is needed to build libFuzzer: apt-get install g++"; exit 1; }
	@cd "$(FUZZ_DIR)" && RUSTFLAGS="$(FUZZ_RUSTFLAGS)" CARGO_TARGET_DIR="$(FUZZ_TARGET_DIR)" \
	  $(CARGO) build --quiet --profile $(FUZZ_PROFILE) --locked --bins --target "$(FUZZ_TRIPLE)" || { echo "make fuzz: building the fuzz targets failed (see above)"; exit 1; }

fuzz: fuzz-build ## Fuzz the stand-ins' parsers, FUZZ_SECONDS (default 60) per target; stops at the first crash
	@mkdir -p "$(FUZZ_DIR)/artifacts"; \
	for t in $(FUZZ_TARGETS); do \
	  mkdir -p "$(FUZZ_DIR)/work/$$t"; \
	  echo "fuzz $$t for $(FUZZ_SECONDS) s"; \
	  "$(FUZZ_BIN)/$$t" -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
	    -artifact_prefix="$(FUZZ_DIR)/artifacts/$$t-" "$(FUZZ_DIR)/work/$$t" "$(FUZZ_DIR)/corpus/$$t" \
	    2>"$(FUZZ_DIR)/work/$$t.log" || { tail -n 30 "$(FUZZ_DIR)/work/$$t.log"; echo "make fuzz: $$t found a crash: $(FUZZ_DIR)/artifacts/"; exit 1; }; \
	  grep -E '^stat::number_of_executed_units|^Done' "$(FUZZ_DIR)/work/$$t.log" | tr '\n' ' '; echo; \
	done
