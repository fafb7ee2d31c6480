#!/usr/bin/env bash
# make destroy: tear both stacks down in the only order that works.
#
#   1/2  DatabaseStack (database account) first: its RDS Proxy endpoints have network
#        interfaces in the application account's shared subnets, so those subnets (and the
#        RAM share) cannot go while the endpoints exist.
#   2/2  ApplicationStack (application account).
#
# The Aurora cluster is deleted with a final snapshot (RemovalPolicy.SNAPSHOT); it is kept,
# and billed, until you delete it. DRY_RUN=1 prints the commands only. Inputs: see
# scripts/cdk-common.sh.
PROG=destroy
# shellcheck source=scripts/cdk-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/cdk-common.sh"

usage="make destroy $USAGE_BOTH_PROFILES"
need_profile APP_PROFILE "$usage"
need_profile DB_PROFILE "$usage"
need_tool aws "aws (AWS CLI v2) not found on PATH: install it, see https://docs.aws.amazon.com/cli/latest/userguide/getting-started-install.html"
need_tool cdk "cdk not found on PATH: run 'npm ci --prefix cdk' (make test-cdk does it) and use 'make destroy'"
resolve_region
cd "$ROOT"

resolve_accounts
base_context
# Destroy only synthesizes to find the stacks: the stand-in code is fine if nothing was built,
# and any external ID will do (the app refuses to synthesize without a valid one), so it gets
# a random throwaway one that nothing ever deploys.
CTX+=(-c lambda_code_source=auto)
EXTERNAL_ID="destroy-only-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"

say "1/2: $DB_STACK in the database account (the proxy endpoints must leave the shared subnets first)"
cdk_step "1/2 (destroy $DB_STACK)" destroy "$DB_STACK" --force --profile "$DB_PROFILE" "${CTX[@]}"
say "2/2: $APP_STACK in the application account (Lambda network interfaces can take 20+ minutes to release)"
cdk_step "2/2 (destroy $APP_STACK)" destroy "$APP_STACK" --force --profile "$APP_PROFILE" "${CTX[@]}"

say "done. The cluster's final snapshot is kept and billed: list it with" \
  "'aws rds describe-db-cluster-snapshots --snapshot-type manual --profile $DB_PROFILE --region $REGION'" \
  "and delete it with 'aws rds delete-db-cluster-snapshot --db-cluster-snapshot-identifier ID ...'"
