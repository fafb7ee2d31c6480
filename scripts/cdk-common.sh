# shellcheck shell=bash
# shellcheck disable=SC2034 # constants below are used by the scripts that source this file
# Shared by scripts/deploy.sh, scripts/cdk-destroy.sh and scripts/cdk-invoke.sh (sourced).
#
# Inputs (environment; `make deploy APP_PROFILE=... DB_PROFILE=... REGION=...` passes them):
#   APP_PROFILE  AWS CLI profile of the application account
#   DB_PROFILE   AWS CLI profile of the database account
#   REGION       region of both stacks (default: "region" in cdk.json)
#   EXTERNAL_ID  optional: overrides "external_id" in cdk.json; "generate" makes a random one and
#                keeps it in DEPLOY_STATE_DIR, where later "generate" runs for the same accounts
#                and region find it (make deploy refuses the shipped placeholder and anything
#                under 16 characters). Give it in the environment (EXTERNAL_ID=... make deploy):
#                `make deploy EXTERNAL_ID=...` leaves it in make's command line.
#   DEPLOY_STATE_DIR  what make deploy keeps between runs: generated external IDs and its cdk
#                output (default: ${XDG_STATE_HOME:-~/.local/state}/connectiontest-deploy, mode 0700)
#   DRY_RUN=1    print every command instead of running it (no AWS call at all)
#   MAKE         make to run `make build` with (default: make)
#   LAMBDA_ZIP   the built function (default: target/lambda/connection-test/bootstrap.zip)
# Tools come from PATH: `aws` (AWS CLI v2) and `cdk` (make puts cdk/node_modules/.bin first).
#
# The external ID never appears on a command line (any local user can read those in
# /proc/PID/cmdline) nor in anything printed: cdk gets it in its environment only, as
# CONNECTIONTEST_EXTERNAL_ID (see cdk/lib/config.ts), and the scripts print its length.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
APP_STACK=ApplicationStack
DB_STACK=DatabaseStack
DRY_RUN="${DRY_RUN:-0}"
LAMBDA_ZIP="${LAMBDA_ZIP:-$ROOT/target/lambda/connection-test/bootstrap.zip}"
STATE_DIR="${DEPLOY_STATE_DIR:-${XDG_STATE_HOME:-${HOME:?HOME is not set}/.local/state}/connectiontest-deploy}"
PROG="${PROG:-$(basename "$0" .sh)}"
# The external ID handed to cdk (cdk_step); kept out of every other program's environment.
export -n EXTERNAL_ID CONNECTIONTEST_EXTERNAL_ID 2>/dev/null || true

# One line on stderr, then stop.
die() {
  echo "$PROG: error: $*" >&2
  exit 1
}

say() { echo "$PROG: $*"; }

# Print a command the way a user could paste it back into a shell.
show() {
  local out="+" a q="'"
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
      out+=" $a"
    elif [[ "$a" != *"$q"* ]]; then
      out+=" $q$a$q"
    elif [[ "$a" != *[\"\$\`\\]* ]]; then
      out+=" \"$a\""
    else
      out+=" $q${a//$q/$q\\$q$q}$q"
    fi
  done
  echo "$out"
}

# step LABEL CMD...: print CMD and run it (unless DRY_RUN=1); on failure stop with one line
# naming the step, so nothing after a failed step ever runs.
step() {
  local label="$1"
  shift
  show "$@"
  [[ "$DRY_RUN" == 1 ]] && return 0
  local rc=0
  "$@" || rc=$?
  step_done "$label" "$rc"
}

# cdk_step LABEL CDK-ARGS...: step for `cdk CDK-ARGS...`, with the external ID (EXTERNAL_ID)
# in cdk's environment as CONNECTIONTEST_EXTERNAL_ID: never in its arguments.
cdk_step() {
  local label="$1"
  shift
  show cdk "$@"
  [[ "$DRY_RUN" == 1 ]] && return 0
  local rc=0
  CONNECTIONTEST_EXTERNAL_ID="$EXTERNAL_ID" cdk "$@" || rc=$?
  step_done "$label" "$rc"
}

step_done() {
  (($2 == 0)) || die "$1 failed (exit $2); later steps were not run. Fix the cause above and re-run: completed steps are no-ops the second time."
}

need_tool() {
  [[ "$DRY_RUN" == 1 ]] && return 0
  command -v "$1" >/dev/null 2>&1 || die "$2"
}

# need_profile VAR-NAME USAGE: stop with the usage line when a profile variable is empty.
need_profile() {
  [[ -n "${!1:-}" ]] || die "$1 is not set: usage: $2"
}
USAGE_BOTH_PROFILES="APP_PROFILE=<application-account profile> DB_PROFILE=<database-account profile> [REGION=us-east-1] [DRY_RUN=1]"

# cdk_context KEY VAR-NAME: a value of "context" in cdk.json ("" when absent).
cdk_context() {
  local key="$1" var="$2" value
  command -v node >/dev/null 2>&1 || die "node not found: install Node.js 20+ (needed to read $key from cdk.json)"
  value="$(node -e 'const c=require(process.argv[1]).context||{};const v=c[process.argv[2]];process.stdout.write(v==null?"":String(v))' "$ROOT/cdk.json" "$key")" ||
    die "could not read \"$key\" from $ROOT/cdk.json"
  printf -v "$var" '%s' "$value"
}

# The function's name: defined once, as "function_name" in cdk.json (the stacks read it too).
resolve_function_name() {
  cdk_context function_name FUNCTION_NAME
  [[ "$FUNCTION_NAME" =~ ^[A-Za-z0-9_-]{1,64}$ ]] || die "\"function_name\" in $ROOT/cdk.json is '$FUNCTION_NAME', not a Lambda function name"
}

# REGION from the environment, else "region" in cdk.json.
resolve_region() {
  if [[ -z "${REGION:-}" ]]; then
    cdk_context region REGION
    [[ -n "$REGION" ]] || die "no \"region\" in $ROOT/cdk.json: pass REGION=..."
  fi
  [[ "$REGION" =~ ^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-[0-9]$ ]] || die "REGION '$REGION' is not an AWS region name such as us-east-1"
}

PLACEHOLDER_EXTERNAL_ID=connectiontest-change-me
MIN_EXTERNAL_ID_LENGTH=16
EXTERNAL_ID_RE='^[A-Za-z0-9+=,.@:/_-]{16,1224}$'
EXTERNAL_ID_HOWTO="set one with 'make deploy EXTERNAL_ID=generate ...' (makes a random one and keeps it for later runs), EXTERNAL_ID=<16+ characters> in the environment, or \"external_id\" in cdk.json"

# The external ID for a deployment: EXTERNAL_ID from the environment, else "external_id" in
# cdk.json; never the shipped placeholder, never short. Checked here, before anything runs.
# EXTERNAL_ID=generate is settled by keep_generated_external_id once the accounts are known.
# The same value goes to both stacks (the role's trust policy and the Lambda's EXTERNAL_ID).
resolve_external_id() {
  local from=EXTERNAL_ID
  if [[ "${EXTERNAL_ID:-}" == generate ]]; then
    EXTERNAL_ID_GENERATE=1
    return 0
  fi
  EXTERNAL_ID_GENERATE=0
  if [[ -z "${EXTERNAL_ID:-}" ]]; then
    cdk_context external_id EXTERNAL_ID
    from='"external_id" in cdk.json'
  fi
  if [[ "$EXTERNAL_ID" == "$PLACEHOLDER_EXTERNAL_ID" ]]; then
    die "the external ID is the shipped placeholder '$PLACEHOLDER_EXTERNAL_ID': $EXTERNAL_ID_HOWTO"
  fi
  if ((${#EXTERNAL_ID} < MIN_EXTERNAL_ID_LENGTH)); then
    die "the external ID is ${#EXTERNAL_ID} characters long, at least $MIN_EXTERNAL_ID_LENGTH are needed: $EXTERNAL_ID_HOWTO"
  fi
  [[ "$EXTERNAL_ID" =~ $EXTERNAL_ID_RE ]] ||
    die "the external ID may only contain A-Z a-z 0-9 and + = , . @ : / _ -: $EXTERNAL_ID_HOWTO"
  say "external ID: set (${#EXTERNAL_ID} characters, from $from)"
}

# EXTERNAL_ID=generate: the ID kept for these two accounts and this region in STATE_DIR, or a
# new random one written there first (mode 0600, directory 0700). A re-run after a failed
# phase must deploy the ID the earlier phases already deployed: a new one would leave the
# role's trust policy and the function's setting disagreeing until every phase has run again.
keep_generated_external_id() {
  [[ "$EXTERNAL_ID_GENERATE" == 1 ]] || return 0
  if [[ "$DRY_RUN" == 1 ]]; then
    EXTERNAL_ID=""
    say "external ID: generate: a real run reuses the one kept for these accounts and this region under $STATE_DIR, or makes one and keeps it there"
    return 0
  fi
  local file="$STATE_DIR/external-id-$APP_ACCOUNT-$DB_ACCOUNT-$REGION" tmp
  mkdir -p -m 700 "$STATE_DIR" || die "could not create $STATE_DIR (DEPLOY_STATE_DIR) to keep the external ID in"
  chmod 700 "$STATE_DIR"
  if [[ -e "$file" ]]; then
    chmod 600 "$file" || die "could not make $file private (chmod 600)"
    IFS= read -r EXTERNAL_ID <"$file" || [[ -n "$EXTERNAL_ID" ]] || die "could not read the external ID kept in $file"
    [[ "$EXTERNAL_ID" =~ $EXTERNAL_ID_RE && "$EXTERNAL_ID" != "$PLACEHOLDER_EXTERNAL_ID" ]] ||
      die "the external ID kept in $file is not valid (${#EXTERNAL_ID} characters; at least $MIN_EXTERNAL_ID_LENGTH from A-Z a-z 0-9 + = , . @ : / _ -): fix or delete that file"
    say "external ID: reusing the one kept in $file (${#EXTERNAL_ID} characters)"
    return 0
  fi
  EXTERNAL_ID="connectiontest-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
  # Written whole under another name first, so no run ever reads half an ID.
  tmp="$(umask 077 && mktemp "$file.XXXXXX")" || die "could not write in $STATE_DIR"
  printf '%s\n' "$EXTERNAL_ID" >"$tmp" && mv -f "$tmp" "$file" || die "could not write $file"
  say "external ID: generated (${#EXTERNAL_ID} characters), kept in $file (mode 0600): later runs with EXTERNAL_ID=generate for these accounts and this region reuse it"
}

# account_of PROFILE VAR-NAME: the 12-digit account id behind a profile (placeholder in dry runs).
account_of() {
  local profile="$1" var="$2" id
  show aws sts get-caller-identity --profile "$profile" --query Account --output text
  if [[ "$DRY_RUN" == 1 ]]; then
    printf -v "$var" '%s' "<account of $profile>"
    return 0
  fi
  id="$(aws sts get-caller-identity --profile "$profile" --query Account --output text)" ||
    die "profile '$profile' has no working credentials (aws sts get-caller-identity failed): check ~/.aws/config or run 'aws sso login --profile $profile'"
  [[ "$id" =~ ^[0-9]{12}$ ]] || die "profile '$profile' returned account '$id', not a 12-digit account id"
  printf -v "$var" '%s' "$id"
}

# Both accounts, checked to be two different ones (RAM cannot share to the owner itself).
resolve_accounts() {
  account_of "$APP_PROFILE" APP_ACCOUNT
  account_of "$DB_PROFILE" DB_ACCOUNT
  if [[ "$DRY_RUN" != 1 && "$APP_ACCOUNT" == "$DB_ACCOUNT" ]]; then
    die "APP_PROFILE and DB_PROFILE both resolve to account $APP_ACCOUNT: this app needs two accounts (the subnets are shared with AWS RAM)"
  fi
}

# Context every cdk call carries: region and accounts from the profiles, not from cdk.json.
# (Not the external ID: cdk_step hands that over in the environment.)
base_context() {
  CTX=(-c "region=$REGION" -c "application_account_id=$APP_ACCOUNT" -c "database_account_id=$DB_ACCOUNT")
}

# stack_output PROFILE STACK KEY VAR-NAME [optional]: one CloudFormation output (placeholder
# in dry runs). "optional": an output the stack has in some configurations only (empty if absent).
stack_output() {
  local profile="$1" stack="$2" key="$3" var="$4" optional="${5:-}" value
  local cmd=(aws cloudformation describe-stacks --stack-name "$stack" --profile "$profile" --region "$REGION"
    --query "Stacks[0].Outputs[?OutputKey=='$key'].OutputValue | [0]" --output text)
  show "${cmd[@]}"
  if [[ "$DRY_RUN" == 1 ]]; then
    printf -v "$var" '%s' "<$stack output $key${optional:+, if it has one}>"
    return 0
  fi
  value="$("${cmd[@]}")" || die "could not read output $key of $stack (aws cloudformation describe-stacks failed)"
  value="${value%$'\n'}"
  if [[ -z "$value" || "$value" == None ]]; then
    [[ "$optional" == optional ]] || die "$stack has no output $key: was it deployed by this version of the app?"
    value=""
  fi
  printf -v "$var" '%s' "$value"
}
