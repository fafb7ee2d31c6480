#!/usr/bin/env bash
# make deploy: the whole two-account deployment with no manual step.
#
#   build      make build -> target/lambda/connection-test/bootstrap.zip
#   phase 1/3  deploy ApplicationStack (application account); read ApplicationVpcId,
#              ApplicationSubnetIds and LambdaSecurityGroupId (the only source the proxy
#              endpoints will admit)
#   phase 2/3  deploy DatabaseStack (database account) into those shared subnets; read
#              ApplicationProxyEndpoint (and ApplicationUserSecretArn, which it has with
#              database_user_auth "secret")
#   phase 3/3  redeploy ApplicationStack so the Lambda gets the proxy endpoint (and the
#              password secret's ARN)
#
# The external ID (EXTERNAL_ID=..., or "external_id" in cdk.json) is checked before anything
# else runs: the shipped placeholder and IDs under 16 characters are refused. EXTERNAL_ID=generate
# reuses the ID kept for the two accounts and the region in the state directory, or makes and
# keeps a new one there, so a re-run after a failed phase deploys the same ID. The ID reaches
# cdk through its environment only and is never printed (see scripts/cdk-common.sh). cdk writes
# the templates, which contain it, into the state directory (mode 0700), not into cdk.out/.
# Every step prints its command first; DRY_RUN=1 prints them all without running anything.
# The first failing step stops the run with one line naming it. Re-running is safe:
# CloudFormation leaves unchanged stacks alone. Inputs: see scripts/cdk-common.sh.
PROG=deploy
# shellcheck source=scripts/cdk-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/cdk-common.sh"

usage="make deploy $USAGE_BOTH_PROFILES"
need_profile APP_PROFILE "$usage"
need_profile DB_PROFILE "$usage"
need_tool aws "aws (AWS CLI v2) not found on PATH: install it, see https://docs.aws.amazon.com/cli/latest/userguide/getting-started-install.html"
need_tool cdk "cdk not found on PATH: run 'npm ci --prefix cdk' (make test-cdk does it) and use 'make deploy'"
resolve_region
resolve_external_id
cd "$ROOT"

say "region $REGION; application account via profile '$APP_PROFILE', database account via profile '$DB_PROFILE'"
resolve_accounts
keep_generated_external_id
base_context
CTX+=(-c lambda_code_source=zip -c "lambda_zip_path=$LAMBDA_ZIP")
DEPLOY=(--require-approval never --output "$STATE_DIR/cdk.out")

say "build: the connection-test function"
step "build (make build)" "${MAKE:-make}" -C "$ROOT" build
if [[ "$DRY_RUN" != 1 && ! -f "$LAMBDA_ZIP" ]]; then
  die "build finished but $LAMBDA_ZIP does not exist: the build target must produce it (cargo lambda build --release --arm64 --output-format zip)"
fi

if [[ "$DRY_RUN" != 1 ]]; then
  mkdir -p -m 700 "$STATE_DIR" || die "could not create $STATE_DIR (DEPLOY_STATE_DIR)"
  chmod 700 "$STATE_DIR"
fi

say "phase 1/3: $APP_STACK in the application account"
cdk_step "phase 1/3 (deploy $APP_STACK)" deploy "$APP_STACK" --profile "$APP_PROFILE" "${DEPLOY[@]}" "${CTX[@]}"
stack_output "$APP_PROFILE" "$APP_STACK" ApplicationVpcId VPC_ID
stack_output "$APP_PROFILE" "$APP_STACK" ApplicationSubnetIds SUBNET_IDS
if [[ "$DRY_RUN" != 1 && ! "$SUBNET_IDS" =~ ^subnet-[0-9a-f]+(,subnet-[0-9a-f]+)+$ ]]; then
  die "$APP_STACK output ApplicationSubnetIds is '$SUBNET_IDS', expected subnet ids separated by commas"
fi
stack_output "$APP_PROFILE" "$APP_STACK" LambdaSecurityGroupId LAMBDA_SG_ID
if [[ "$DRY_RUN" != 1 && ! "$LAMBDA_SG_ID" =~ ^sg-[0-9a-f]+$ ]]; then
  die "$APP_STACK output LambdaSecurityGroupId is '$LAMBDA_SG_ID', expected one security group id"
fi
CTX+=(-c "application_vpc_id=$VPC_ID" -c "application_vpc_subnets=$SUBNET_IDS" -c "application_lambda_security_group_id=$LAMBDA_SG_ID")

say "phase 2/3: $DB_STACK in the database account (Aurora and RDS Proxy: expect 20-30 minutes the first time)"
cdk_step "phase 2/3 (deploy $DB_STACK)" deploy "$DB_STACK" --profile "$DB_PROFILE" "${DEPLOY[@]}" "${CTX[@]}"
stack_output "$DB_PROFILE" "$DB_STACK" ApplicationProxyEndpoint PROXY_ENDPOINT
PHASE3_CTX=(-c "application_rds_proxy_endpoint=$PROXY_ENDPOINT")
stack_output "$DB_PROFILE" "$DB_STACK" ApplicationUserSecretArn SECRET_ARN optional
if [[ -n "$SECRET_ARN" ]]; then
  PHASE3_CTX+=(-c "application_db_secret_arn=$SECRET_ARN")
fi

say "phase 3/3: $APP_STACK again, with the proxy endpoint"
cdk_step "phase 3/3 (redeploy $APP_STACK)" deploy "$APP_STACK" --profile "$APP_PROFILE" "${DEPLOY[@]}" "${CTX[@]}" "${PHASE3_CTX[@]}"

say "done: try it with 'make invoke APP_PROFILE=$APP_PROFILE REGION=$REGION'"
