#!/usr/bin/env bash
# Stand-in for `aws`, `cdk` and `make` in the deploy-script tests (copied under those names
# into a directory put first on PATH). Each call is appended to $STUB_LOG as one line:
# the program name and its arguments separated by single spaces. Answers come from
# $STUB_RESPONSES: lines "PATTERN<TAB>OUTPUT"; the first PATTERN that is a substring of the
# call line wins and OUTPUT is printed. A call whose line contains $STUB_FAIL exits 3.
# `aws lambda invoke ... FILE` also writes $STUB_INVOKE_PAYLOAD to FILE, as the real one does.
# With $STUB_ENV_LOG set, each call also appends one line there: the program name, then
# NAME=VALUE for every variable named in $STUB_ENV_VARS ("<unset>" when it is not set), so
# the tests can see what reached a program through its environment rather than its arguments.
name="$(basename "$0")"
line="$name"
for a in "$@"; do line+=" $a"; done
printf '%s\n' "$line" >>"${STUB_LOG:?STUB_LOG not set}"
if [[ -n "${STUB_ENV_LOG:-}" ]]; then
  env_line="$name"
  for v in ${STUB_ENV_VARS:-}; do env_line+=" $v=${!v-<unset>}"; done
  printf '%s\n' "$env_line" >>"$STUB_ENV_LOG"
fi

if [[ -n "${STUB_FAIL:-}" && "$line" == *"$STUB_FAIL"* ]]; then
  echo "$name (stub): simulated failure" >&2
  exit 3
fi
if [[ "$name" == aws && "${1:-}" == lambda && "${2:-}" == invoke ]]; then
  printf '%s' "${STUB_INVOKE_PAYLOAD:-}" >"${!#}"
fi
if [[ -n "${STUB_RESPONSES:-}" && -f "$STUB_RESPONSES" ]]; then
  while IFS=$'\t' read -r pattern output; do
    if [[ -n "$pattern" && "$line" == *"$pattern"* ]]; then
      printf '%s\n' "$output"
      exit 0
    fi
  done <"$STUB_RESPONSES"
fi
exit 0
