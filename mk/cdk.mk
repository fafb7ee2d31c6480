# CDK app (cdk/ and cdk.json): type check, jest, synth, cfn-lint, checkov, and the two-account
# deployment. Everything it needs is installed here on first use: cdk/node_modules (npm ci,
# redone when package.json or package-lock.json change), cfn-lint and checkov in .venv (from
# PyPI, versions pinned in cdk/requirements-*.txt).
CDK_DIR      := $(ROOT)/cdk
CDK_BIN      := $(CDK_DIR)/node_modules/.bin
CDK_STAMP    := $(CDK_DIR)/node_modules/.npm-ci.stamp
CDK_OUT      := $(ROOT)/cdk.out
CFN_LINT     := $(VENV)/bin/cfn-lint
CFN_LINT_REQ := $(CDK_DIR)/requirements-cfn-lint.txt
CHECKOV      := $(VENV)/bin/checkov
CHECKOV_REQ  := $(CDK_DIR)/requirements-checkov.txt
# The other modes of the app (cdk.json's defaults are iam and environment), each synthesized
# (cdk-nag included) into its own directory and linted like the default templates.
CDK_MODES_OUT := $(ROOT)/cdk.out-modes
CDK_MODES     := secret-parameters secret-no-rotation
CDK_MODE_secret-parameters  := -c database_user_auth=secret -c lambda_settings_from=parameters
CDK_MODE_secret-no-rotation := -c database_user_auth=secret -c database_secret_rotation_days=0
# An offline synth's external ID: CONNECTIONTEST_EXTERNAL_ID, else a random one.
SYNTH_EXTERNAL_ID = CONNECTIONTEST_EXTERNAL_ID="$${CONNECTIONTEST_EXTERNAL_ID:-synth-only-$$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')}"

# make deploy / invoke / destroy inputs (see scripts/cdk-common.sh).
APP_PROFILE ?=
DB_PROFILE  ?=
REGION      ?=
DRY_RUN     ?=
# EXTERNAL_ID (and DEPLOY_STATE_DIR) reach the scripts the way make passes on any variable
# from the environment or the command line: exported. EXTERNAL_ID must not be expanded into a
# recipe, or it would sit in the recipe shell's command line, readable by every local user.
CDK_SCRIPT_ENV = PATH="$(CDK_BIN):$$PATH" MAKE="$(MAKE)" APP_PROFILE="$(APP_PROFILE)" \
	DB_PROFILE="$(DB_PROFILE)" REGION="$(REGION)" DRY_RUN="$(DRY_RUN)"

EXTRA_TESTS += test-cdk
EXTRA_LINTS += lint-cdk

.PHONY: cdk-deps lint-cdk test-cdk synth synth-modes checkov deploy invoke destroy

$(CDK_STAMP): $(CDK_DIR)/package.json $(CDK_DIR)/package-lock.json
	@command -v npm >/dev/null || { echo "npm not found: install Node.js 20+ with npm (apt-get install nodejs npm, or nodejs.org)"; exit 1; }
	@node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' || \
		{ echo "Node.js $$(node --version) is too old: aws-cdk-lib needs Node.js 20 or newer"; exit 1; }
	cd $(CDK_DIR) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

cdk-deps: $(CDK_STAMP) ## Install the CDK app's npm dependencies (npm ci in cdk/)

$(CFN_LINT): $(CFN_LINT_REQ)
	@command -v python3 >/dev/null || { echo "python3 not found: install python3 and python3-venv to run cfn-lint"; exit 1; }
	@test -x $(VENV)/bin/python || python3 -m venv $(VENV) || \
		{ echo "could not create $(VENV): install python3-venv (apt-get install python3-venv)"; exit 1; }
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r $(CFN_LINT_REQ) || \
		{ echo "could not install cfn-lint from PyPI into $(VENV): check network access to PyPI"; exit 1; }
	@touch $@

# Installed after cfn-lint (both pins must resolve together in one venv).
$(CHECKOV): $(CHECKOV_REQ) $(CFN_LINT)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r $(CHECKOV_REQ) -r $(CFN_LINT_REQ) || \
		{ echo "could not install checkov from PyPI into $(VENV): check network access to PyPI (or run $(VENV)/bin/pip install -r $(CHECKOV_REQ))"; exit 1; }
	@touch $@

lint-cdk: $(CDK_STAMP) ## TypeScript type check of the CDK app and its tests (tsc --noEmit)
	cd $(CDK_DIR) && $(CDK_BIN)/tsc --noEmit -p .

test-cdk: lint-cdk $(CFN_LINT) $(CHECKOV) ## CDK: jest (assertions, cdk-nag, context checks, deploy scripts, provisioning SQL on PostgreSQL), synth of every mode, cfn-lint, checkov
	cd $(CDK_DIR) && $(CDK_BIN)/jest --runInBand
	@$(MAKE) --no-print-directory synth synth-modes
	@# W3005 (DependsOn duplicating a Ref/GetAtt) is emitted by CDK's own constructs: harmless noise.
	$(CFN_LINT) --non-zero-exit-code error --ignore-checks W3005 -- $(CDK_OUT)/*.template.json $(CDK_MODES_OUT)/*/*.template.json
	@$(MAKE) --no-print-directory checkov
	@echo "test-cdk: jest, synth (cdk-nag AwsSolutions clean), cfn-lint (no errors) and checkov (no unsuppressed failure) passed"

checkov: $(CHECKOV) ## checkov on the synthesized templates in cdk.out/ and cdk.out-modes/ (run make synth first); fails on any unsuppressed finding
	@ls $(CDK_OUT)/ApplicationStack.template.json $(CDK_OUT)/DatabaseStack.template.json >/dev/null 2>&1 || \
		{ echo "checkov: no templates in $(CDK_OUT): run 'make synth' first"; exit 1; }
	@# Suppressions live in each resource's Metadata.checkov.skip, each with its reason (lib/checkov.ts).
	$(CHECKOV) --quiet --compact --framework cloudformation --skip-download \
		-f $(CDK_OUT)/ApplicationStack.template.json -f $(CDK_OUT)/DatabaseStack.template.json \
		$(addprefix -f ,$(wildcard $(CDK_MODES_OUT)/*/*.template.json))

# The app refuses cdk.json's placeholder external ID on every synth, so this offline synth
# gives it a random one of its own (unless CONNECTIONTEST_EXTERNAL_ID is set): no template
# ever carries a value anyone can read in this repository.
synth: $(CDK_STAMP) ## Synthesize both stacks into cdk.out/ offline (a random external ID); fails on any cdk-nag finding
	cd $(ROOT) && $(SYNTH_EXTERNAL_ID) $(CDK_BIN)/cdk synth --quiet

synth-modes: $(CDK_STAMP) ## Synthesize both stacks in the other modes (password secret, Parameter Store settings) into cdk.out-modes/MODE/
	cd $(ROOT) && $(foreach m,$(CDK_MODES),$(SYNTH_EXTERNAL_ID) $(CDK_BIN)/cdk synth --quiet -o $(CDK_MODES_OUT)/$(m) $(CDK_MODE_$(m)) &&) true

deploy: $(CDK_STAMP) ## Build, then deploy both stacks in 3 phases: APP_PROFILE=.. DB_PROFILE=.. [EXTERNAL_ID=generate] [REGION=..] [DRY_RUN=1]
	@$(CDK_SCRIPT_ENV) bash $(ROOT)/scripts/deploy.sh

invoke: ## Invoke the connection-test function and print its answer: APP_PROFILE=.. [REGION=..]
	@$(CDK_SCRIPT_ENV) bash $(ROOT)/scripts/cdk-invoke.sh

destroy: $(CDK_STAMP) ## Delete DatabaseStack, then ApplicationStack: APP_PROFILE=.. DB_PROFILE=.. [REGION=..] [DRY_RUN=1]
	@$(CDK_SCRIPT_ENV) bash $(ROOT)/scripts/cdk-destroy.sh
