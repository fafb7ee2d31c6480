#!/usr/bin/env bash
# make invoke: run the connection-test function ("function_name" in cdk.json) once and print
# what it returned.
#
# Success is the function's JSON ("Database connection was successful!"); a failure is a
# Lambda function error whose type names the stage and whose message gives cause and hint,
# and makes this command exit 1. The payload is left in response.json at the repository root.
# Inputs: APP_PROFILE (required), REGION (default: cdk.json), DRY_RUN=1.
PROG=invoke
# shellcheck source=scripts/cdk-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/cdk-common.sh"

need_profile APP_PROFILE "make invoke APP_PROFILE=<application-account profile> [REGION=us-east-1] [DRY_RUN=1]"
need_tool aws "aws (AWS CLI v2) not found on PATH: install it, see https://docs.aws.amazon.com/cli/latest/userguide/getting-started-install.html"
resolve_region
resolve_function_name
cd "$ROOT"

RESPONSE_FILE="${RESPONSE_FILE:-response.json}"
cmd=(aws lambda invoke --function-name "$FUNCTION_NAME" --profile "$APP_PROFILE" --region "$REGION" --output json "$RESPONSE_FILE")
show "${cmd[@]}"
[[ "$DRY_RUN" == 1 ]] && exit 0

rm -f "$RESPONSE_FILE"
meta="$("${cmd[@]}")" || die "aws lambda invoke failed (see above): is ApplicationStack deployed in $REGION for profile '$APP_PROFILE'?"
echo "$meta"
echo "$RESPONSE_FILE:"
cat "$RESPONSE_FILE"
echo
if grep -q '"FunctionError"' <<<"$meta"; then
  die "$FUNCTION_NAME returned a function error: errorType names the failing stage, errorMessage the cause and hint (alarm $FUNCTION_NAME-errors will fire too)"
fi
say "ok"
