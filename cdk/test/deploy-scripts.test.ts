/**
 * make deploy / destroy / invoke orchestration, run for real against stub `aws`, `cdk` and
 * `make` executables (test/stubs/stub.sh) that record every call and return canned outputs.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { REPO_ROOT, repoContext, synth } from './helpers';

const SCRIPTS = path.join(REPO_ROOT, 'scripts');
const STUB = path.join(__dirname, 'stubs', 'stub.sh');

const APP = '111111111111';
const DB = '222222222222';
const VPC = 'vpc-0aaaaaaaaaaaaaaaa';
const SUBNETS = 'subnet-0aaaaaaaaaaaaaaaa,subnet-0bbbbbbbbbbbbbbbb';
const LAMBDA_SG = 'sg-0cccccccccccccccc';
const HOST = 'connectiontest-read-only.endpoint.proxy-cdefghijklmn.eu-west-1.rds.amazonaws.com';

const CANNED: [string, string][] = [
  ['sts get-caller-identity --profile app-admin', APP],
  ['sts get-caller-identity --profile db-admin', DB],
  ["OutputKey=='ApplicationVpcId'", VPC],
  ["OutputKey=='ApplicationSubnetIds'", SUBNETS],
  ["OutputKey=='LambdaSecurityGroupId'", LAMBDA_SG],
  ["OutputKey=='ApplicationProxyEndpoint'", HOST],
];

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
  calls: string[];
  /** Per call, in order: the program and the ID_VARS it had in its environment. */
  env: string[];
}

/** What the stubs record from their environment: where the external ID may travel. */
const ID_VARS = ['CONNECTIONTEST_EXTERNAL_ID', 'EXTERNAL_ID'];

interface Sandbox {
  dir: string;
  zip: string;
  run(script: string, env?: Record<string, string | undefined>, canned?: [string, string][]): Run;
}

function sandbox(): Sandbox {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'deploy-test-'));
  const bin = path.join(dir, 'bin');
  fs.mkdirSync(bin);
  for (const tool of ['aws', 'cdk', 'make']) {
    fs.copyFileSync(STUB, path.join(bin, tool));
    fs.chmodSync(path.join(bin, tool), 0o755);
  }
  const zip = path.join(dir, 'bootstrap.zip');
  fs.writeFileSync(zip, 'zip');
  return {
    dir,
    zip,
    run(script, env = {}, canned = CANNED) {
      const log = path.join(dir, `calls-${Math.random().toString(36).slice(2)}.log`);
      const envLog = `${log}.env`;
      const responses = path.join(dir, 'responses.tsv');
      fs.writeFileSync(responses, canned.map(([p, o]) => `${p}\t${o}`).join('\n') + '\n');
      const fullEnv: Record<string, string> = {
        PATH: `${bin}:${process.env.PATH}`,
        HOME: dir,
        STUB_LOG: log,
        STUB_RESPONSES: responses,
        STUB_ENV_LOG: envLog,
        STUB_ENV_VARS: ID_VARS.join(' '),
        LAMBDA_ZIP: zip,
      };
      for (const [k, v] of Object.entries(env)) {
        if (v === undefined) delete fullEnv[k];
        else fullEnv[k] = v;
      }
      const r = spawnSync('bash', [path.join(SCRIPTS, script)], { cwd: dir, env: fullEnv, encoding: 'utf8' });
      const lines = (f: string) => (fs.existsSync(f) ? fs.readFileSync(f, 'utf8').split('\n').filter(Boolean) : []);
      return { status: r.status, stdout: r.stdout, stderr: r.stderr, calls: lines(log), env: lines(envLog) };
    },
  };
}

const PROFILES = { APP_PROFILE: 'app-admin', DB_PROFILE: 'db-admin', REGION: 'eu-west-1' };
const EXT = 'ext-0123456789abcdef';
/** What make deploy is normally given: the profiles, a region and a real external ID. */
const DEPLOY = { ...PROFILES, EXTERNAL_ID: EXT };

/** Where deploy.sh keeps its state when HOME is `home` and nothing overrides it. */
const stateDir = (home: string) => path.join(home, '.local', 'state', 'connectiontest-deploy');

function expectedDeployCalls(zip: string, region = 'eu-west-1'): string[] {
  const home = path.dirname(zip);
  const ctx = `-c region=${region} -c application_account_id=${APP} -c database_account_id=${DB} -c lambda_code_source=zip -c lambda_zip_path=${zip}`;
  const out = (profile: string, stack: string, key: string) =>
    `aws cloudformation describe-stacks --stack-name ${stack} --profile ${profile} --region ${region} --query Stacks[0].Outputs[?OutputKey=='${key}'].OutputValue | [0] --output text`;
  const shared = `-c application_vpc_id=${VPC} -c application_vpc_subnets=${SUBNETS} -c application_lambda_security_group_id=${LAMBDA_SG}`;
  const deployFlags = `--require-approval never --output ${path.join(stateDir(home), 'cdk.out')}`;
  return [
    'aws sts get-caller-identity --profile app-admin --query Account --output text',
    'aws sts get-caller-identity --profile db-admin --query Account --output text',
    `make -C ${REPO_ROOT} build`,
    `cdk deploy ApplicationStack --profile app-admin ${deployFlags} ${ctx}`,
    out('app-admin', 'ApplicationStack', 'ApplicationVpcId'),
    out('app-admin', 'ApplicationStack', 'ApplicationSubnetIds'),
    out('app-admin', 'ApplicationStack', 'LambdaSecurityGroupId'),
    `cdk deploy DatabaseStack --profile db-admin ${deployFlags} ${ctx} ${shared}`,
    out('db-admin', 'DatabaseStack', 'ApplicationProxyEndpoint'),
    out('db-admin', 'DatabaseStack', 'ApplicationUserSecretArn'),
    `cdk deploy ApplicationStack --profile app-admin ${deployFlags} ${ctx} ${shared} -c application_rds_proxy_endpoint=${HOST}`,
  ];
}

/** The external ID each call of `tool` had in CONNECTIONTEST_EXTERNAL_ID ("<unset>" if none). */
function idsInEnv(r: Run, tool: string): string[] {
  return r.env.filter((l) => l.startsWith(`${tool} `)).map((l) => /CONNECTIONTEST_EXTERNAL_ID=(\S*)/.exec(l)![1]);
}

/** The ID is on no command line (argv is world-readable in /proc) and in no output. */
function expectNoLeak(r: Run, id: string) {
  expect(id.length).toBeGreaterThanOrEqual(16);
  for (const c of r.calls) expect(c).not.toContain(id);
  expect(r.stdout).not.toContain(id);
  expect(r.stderr).not.toContain(id);
}

/** Only cdk receives the external ID, and only through its environment. */
function expectIdOnlyInCdkEnv(r: Run, id: string) {
  expect(idsInEnv(r, 'cdk').every((v) => v === id)).toBe(true);
  for (const l of r.env.filter((e) => !e.startsWith('cdk '))) expect(l).toBe(`${l.split(' ')[0]} ${ID_VARS.map((v) => `${v}=<unset>`).join(' ')}`);
}

/** The script's own last line on stderr (stubs may print their own lines before it). */
const lastErrorLine = (r: Run) => r.stderr.trim().split('\n').pop();

describe('scripts/deploy.sh (make deploy)', () => {
  let box: Sandbox;
  beforeAll(() => {
    box = sandbox();
  });
  afterAll(() => fs.rmSync(box.dir, { recursive: true, force: true }));

  test('runs build and the three phases in order, threading outputs into the next phase', () => {
    const r = box.run('deploy.sh', DEPLOY);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.calls).toEqual(expectedDeployCalls(box.zip));
    expect(idsInEnv(r, 'cdk')).toEqual([EXT, EXT, EXT]);
    expectIdOnlyInCdkEnv(r, EXT);
    expectNoLeak(r, EXT);
    expect(r.stdout).toContain(`deploy: external ID: set (${EXT.length} characters, from EXTERNAL_ID)`);
    expect(r.stdout).toContain('deploy: phase 3/3: ApplicationStack again, with the proxy endpoint');
    expect(r.stdout).toContain("make invoke APP_PROFILE=app-admin REGION=eu-west-1");
  });

  test('a failure in phase 2 stops the run: no endpoint lookup, no phase 3', () => {
    const r = box.run('deploy.sh', { ...DEPLOY, STUB_FAIL: 'cdk deploy DatabaseStack' });
    expect(r.status).toBe(1);
    expect(r.calls).toEqual(expectedDeployCalls(box.zip).slice(0, 8));
    expect(lastErrorLine(r)).toBe(
      'deploy: error: phase 2/3 (deploy DatabaseStack) failed (exit 3); later steps were not run. Fix the cause above and re-run: completed steps are no-ops the second time.',
    );
  });

  test('a failure in phase 1 stops before the database account is touched', () => {
    const r = box.run('deploy.sh', { ...DEPLOY, STUB_FAIL: 'cdk deploy ApplicationStack' });
    expect(r.status).toBe(1);
    expect(r.calls).toEqual(expectedDeployCalls(box.zip).slice(0, 4));
    expect(lastErrorLine(r)).toMatch(/^deploy: error: phase 1\/3 \(deploy ApplicationStack\) failed \(exit 3\)/);
  });

  test('a failed build stops before any deployment', () => {
    const r = box.run('deploy.sh', { ...DEPLOY, STUB_FAIL: 'make -C' });
    expect(r.status).toBe(1);
    expect(r.calls).toEqual(expectedDeployCalls(box.zip).slice(0, 3));
    expect(lastErrorLine(r)).toMatch(/^deploy: error: build \(make build\) failed \(exit 3\)/);
  });

  test('a build that leaves no zip is reported, nothing is deployed', () => {
    const r = box.run('deploy.sh', { ...DEPLOY, LAMBDA_ZIP: path.join(box.dir, 'missing.zip') });
    expect(r.status).toBe(1);
    expect(r.calls).toHaveLength(3);
    expect(lastErrorLine(r)).toBe(
      `deploy: error: build finished but ${path.join(box.dir, 'missing.zip')} does not exist: the build target must produce it (cargo lambda build --release --arm64 --output-format zip)`,
    );
  });

  test('a missing stack output stops before phase 2', () => {
    const canned = CANNED.map(([p, o]): [string, string] => (p.includes('ApplicationSubnetIds') ? [p, 'None'] : [p, o]));
    const r = box.run('deploy.sh', DEPLOY, canned);
    expect(r.status).toBe(1);
    expect(r.calls).toEqual(expectedDeployCalls(box.zip).slice(0, 6));
    expect(lastErrorLine(r)).toBe('deploy: error: ApplicationStack has no output ApplicationSubnetIds: was it deployed by this version of the app?');
  });

  test('a malformed subnet list (trailing comma) stops before phase 2', () => {
    const canned = CANNED.map(([p, o]): [string, string] => (p.includes('ApplicationSubnetIds') ? [p, `${SUBNETS},`] : [p, o]));
    const r = box.run('deploy.sh', DEPLOY, canned);
    expect(r.status).toBe(1);
    expect(r.calls).toHaveLength(6);
    expect(lastErrorLine(r)).toMatch(/ApplicationSubnetIds is '.*,', expected subnet ids separated by commas$/);
  });

  test("a malformed LambdaSecurityGroupId stops before phase 2", () => {
    const canned = CANNED.map(([p, o]): [string, string] => (p.includes('LambdaSecurityGroupId') ? [p, 'None'] : [p, o]));
    const missing = box.run('deploy.sh', DEPLOY, canned);
    expect(missing.status).toBe(1);
    expect(missing.calls).toEqual(expectedDeployCalls(box.zip).slice(0, 7));
    expect(lastErrorLine(missing)).toBe('deploy: error: ApplicationStack has no output LambdaSecurityGroupId: was it deployed by this version of the app?');
    const bad = CANNED.map(([p, o]): [string, string] => (p.includes('LambdaSecurityGroupId') ? [p, 'sg-0ccc,sg-0ddd'] : [p, o]));
    const r = box.run('deploy.sh', DEPLOY, bad);
    expect(r.status).toBe(1);
    expect(r.calls).toHaveLength(7);
    expect(lastErrorLine(r)).toBe("deploy: error: ApplicationStack output LambdaSecurityGroupId is 'sg-0ccc,sg-0ddd', expected one security group id");
  });

  test('missing profiles: one clear line, no call made', () => {
    for (const missing of ['APP_PROFILE', 'DB_PROFILE']) {
      const r = box.run('deploy.sh', { ...DEPLOY, [missing]: undefined });
      expect(r.status).toBe(1);
      expect(r.calls).toEqual([]);
      expect(r.stderr).toBe(
        `deploy: error: ${missing} is not set: usage: make deploy APP_PROFILE=<application-account profile> DB_PROFILE=<database-account profile> [REGION=us-east-1] [DRY_RUN=1]\n`,
      );
    }
  });

  test('both profiles in the same account are refused before anything is built', () => {
    const r = box.run('deploy.sh', { ...DEPLOY, DB_PROFILE: 'app-admin' });
    expect(r.status).toBe(1);
    expect(r.calls).toHaveLength(2);
    expect(lastErrorLine(r)).toBe(
      `deploy: error: APP_PROFILE and DB_PROFILE both resolve to account ${APP}: this app needs two accounts (the subnets are shared with AWS RAM)`,
    );
  });

  test('a profile without credentials is named', () => {
    const r = box.run('deploy.sh', { ...DEPLOY, STUB_FAIL: 'get-caller-identity --profile db-admin' });
    expect(r.status).toBe(1);
    expect(lastErrorLine(r)).toMatch(/^deploy: error: profile 'db-admin' has no working credentials/);
  });

  test('DRY_RUN=1 prints every command in order and runs none', () => {
    const r = box.run('deploy.sh', { ...DEPLOY, DRY_RUN: '1' });
    expect(r.status).toBe(0);
    expect(r.calls).toEqual([]);
    const printed = r.stdout.split('\n').filter((l) => l.startsWith('+ '));
    expect(printed.map((l) => l.split(' ').slice(1, 4).join(' '))).toEqual([
      'aws sts get-caller-identity',
      'aws sts get-caller-identity',
      `make -C ${REPO_ROOT}`,
      'cdk deploy ApplicationStack',
      'aws cloudformation describe-stacks',
      'aws cloudformation describe-stacks',
      'aws cloudformation describe-stacks',
      'cdk deploy DatabaseStack',
      'aws cloudformation describe-stacks',
      'aws cloudformation describe-stacks',
      'cdk deploy ApplicationStack',
    ]);
    expect(printed[7]).toContain("'application_vpc_subnets=<ApplicationStack output ApplicationSubnetIds>'");
    expect(printed[7]).toContain("'application_lambda_security_group_id=<ApplicationStack output LambdaSecurityGroupId>'");
    expect(printed[10]).toContain("'application_rds_proxy_endpoint=<DatabaseStack output ApplicationProxyEndpoint>'");
    expect(printed[10]).toContain("'application_db_secret_arn=<DatabaseStack output ApplicationUserSecretArn, if it has one>'");
  });

  test('with a password user (DatabaseStack output ApplicationUserSecretArn), phase 3 passes the secret ARN too', () => {
    const arn = 'arn:aws:secretsmanager:eu-west-1:222222222222:secret:ApplicationUserSecretA6CF3A7A-AbCdEf';
    const r = box.run('deploy.sh', DEPLOY, [...CANNED, ["OutputKey=='ApplicationUserSecretArn'", arn]]);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const expected = expectedDeployCalls(box.zip);
    expected[expected.length - 1] += ` -c application_db_secret_arn=${arn}`;
    expect(r.calls).toEqual(expected);
  });

  test('REGION defaults to cdk.json; EXTERNAL_ID overrides cdk.json in every cdk call, through its environment', () => {
    const r = box.run('deploy.sh', { ...DEPLOY, REGION: undefined, EXTERNAL_ID: 'another-external-id-42' });
    expect(r.status).toBe(0);
    expect(r.calls).toEqual(expectedDeployCalls(box.zip, 'us-east-1'));
    expect(idsInEnv(r, 'cdk')).toEqual(['another-external-id-42', 'another-external-id-42', 'another-external-id-42']);
    expectNoLeak(r, 'another-external-id-42');
  });

  test('the external ID is on no command line and in no output: dry runs, failures and generate included', () => {
    const runs: [Record<string, string | undefined>, string | undefined][] = [
      [{ ...DEPLOY, DRY_RUN: '1' }, EXT],
      [{ ...DEPLOY, STUB_FAIL: 'cdk deploy DatabaseStack' }, EXT],
      [{ ...DEPLOY, STUB_FAIL: 'make -C' }, EXT],
      [{ ...PROFILES, EXTERNAL_ID: 'generate', DEPLOY_STATE_DIR: path.join(box.dir, 'leak-check-state') }, undefined],
    ];
    for (const [env, given] of runs) {
      const r = box.run('deploy.sh', env);
      const id = given ?? idsInEnv(r, 'cdk')[0];
      expect(id).toMatch(/^[\w+=,.@:/-]{16,}$/);
      expectNoLeak(r, id);
      expectIdOnlyInCdkEnv(r, id);
    }
  });

  test('EXTERNAL_ID=generate keeps the new ID in a 0600 file under the state directory; a re-run after a failed phase reuses it', () => {
    const file = path.join(stateDir(box.dir), `external-id-${APP}-${DB}-eu-west-1`);
    fs.rmSync(stateDir(box.dir), { recursive: true, force: true });
    const first = box.run('deploy.sh', { ...PROFILES, EXTERNAL_ID: 'generate', STUB_FAIL: 'cdk deploy DatabaseStack' });
    expect(first.status).toBe(1);
    const [id, ...rest] = idsInEnv(first, 'cdk');
    expect(id).toMatch(/^connectiontest-[0-9a-f]{32}$/);
    expect(rest).toEqual([id]);
    expect(fs.readFileSync(file, 'utf8').trim()).toBe(id);
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    expect(fs.statSync(stateDir(box.dir)).mode & 0o777).toBe(0o700);
    expect(first.stdout).toContain(`deploy: external ID: generated (${id.length} characters), kept in ${file} (mode 0600)`);
    expectNoLeak(first, id);

    // The re-run deploys every phase with the same ID, so the trust policy and the function agree.
    fs.chmodSync(file, 0o644);
    const second = box.run('deploy.sh', { ...PROFILES, EXTERNAL_ID: 'generate' });
    expect(second.status).toBe(0);
    expect(idsInEnv(second, 'cdk')).toEqual([id, id, id]);
    expect(second.stdout).toContain(`deploy: external ID: reusing the one kept in ${file} (${id.length} characters)`);
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    expectNoLeak(second, id);

    // Another region (or pair of accounts) is another deployment: its own ID.
    const other = box.run('deploy.sh', { ...PROFILES, REGION: 'eu-central-1', EXTERNAL_ID: 'generate' });
    expect(other.status).toBe(0);
    const otherId = idsInEnv(other, 'cdk')[0];
    expect(otherId).not.toBe(id);
    expect(fs.readFileSync(path.join(stateDir(box.dir), `external-id-${APP}-${DB}-eu-central-1`), 'utf8').trim()).toBe(otherId);
  });

  test('a kept external ID that is not valid stops the run, naming the file but not its content', () => {
    const dir = path.join(box.dir, 'bad-state');
    fs.mkdirSync(dir, { mode: 0o700, recursive: true });
    const file = path.join(dir, `external-id-${APP}-${DB}-eu-west-1`);
    fs.writeFileSync(file, 'too-short\n', { mode: 0o600 });
    const r = box.run('deploy.sh', { ...PROFILES, EXTERNAL_ID: 'generate', DEPLOY_STATE_DIR: dir });
    expect(r.status).toBe(1);
    expect(r.calls).toHaveLength(2);
    expect(lastErrorLine(r)).toBe(
      `deploy: error: the external ID kept in ${file} is not valid (9 characters; at least 16 from A-Z a-z 0-9 + = , . @ : / _ -): fix or delete that file`,
    );
    expect(r.stderr + r.stdout).not.toContain('too-short');
  });

  test('EXTERNAL_ID=generate in a dry run writes nothing and says what a real run does', () => {
    const dir = path.join(box.dir, 'dry-state');
    const r = box.run('deploy.sh', { ...PROFILES, EXTERNAL_ID: 'generate', DRY_RUN: '1', DEPLOY_STATE_DIR: dir });
    expect(r.status).toBe(0);
    expect(r.calls).toEqual([]);
    expect(fs.existsSync(dir)).toBe(false);
    expect(r.stdout).toContain(
      `deploy: external ID: generate: a real run reuses the one kept for these accounts and this region under ${dir}, or makes one and keeps it there`,
    );
  });

  const HOWTO =
    "set one with 'make deploy EXTERNAL_ID=generate ...' (makes a random one and keeps it for later runs), EXTERNAL_ID=<16+ characters> in the environment, or \"external_id\" in cdk.json";

  test('the placeholder external ID of cdk.json is refused before any call, with one line saying how to set one', () => {
    for (const env of [{ ...PROFILES }, { ...PROFILES, EXTERNAL_ID: 'connectiontest-change-me' }, { ...PROFILES, DRY_RUN: '1' }]) {
      const r = box.run('deploy.sh', env);
      expect(r.status).toBe(1);
      expect(r.calls).toEqual([]);
      expect(r.stderr).toBe(`deploy: error: the external ID is the shipped placeholder 'connectiontest-change-me': ${HOWTO}\n`);
    }
  });

  test('an external ID under 16 characters is refused; so are characters STS does not accept', () => {
    const short = box.run('deploy.sh', { ...PROFILES, EXTERNAL_ID: 'fifteen-chars-x' });
    expect(short.status).toBe(1);
    expect(short.calls).toEqual([]);
    expect(short.stderr).toBe(`deploy: error: the external ID is 15 characters long, at least 16 are needed: ${HOWTO}\n`);
    const bad = box.run('deploy.sh', { ...PROFILES, EXTERNAL_ID: 'has spaces in it, sixteen+' });
    expect(bad.status).toBe(1);
    expect(bad.calls).toEqual([]);
    expect(bad.stderr).toMatch(/^deploy: error: the external ID may only contain/);
  });

  test('make deploy hands EXTERNAL_ID to the script in its environment, never on a command line', () => {
    // make runs each recipe as `$(SHELL) -c RECIPE`: record those arguments.
    const rec = path.join(box.dir, 'record-shell.sh');
    const shellLog = path.join(box.dir, 'shell-argv.log');
    fs.writeFileSync(rec, `#!/bin/bash\nprintf '%s\\n' "$*" >>"${shellLog}"\nexec /bin/bash "$@"\n`, { mode: 0o755 });
    const id = 'make-env-external-id-0123456789';
    const r = spawnSync('make', ['-s', '-C', REPO_ROOT, `SHELL=${rec}`, 'deploy', 'DRY_RUN=1', 'APP_PROFILE=app-admin', 'DB_PROFILE=db-admin', 'REGION=eu-west-1'], {
      env: { ...process.env, EXTERNAL_ID: id, CONNECTIONTEST_EXTERNAL_ID: undefined, HOME: box.dir },
      encoding: 'utf8',
    });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toContain(`deploy: external ID: set (${id.length} characters, from EXTERNAL_ID)`);
    expect(r.stdout).not.toContain(id);
    const argv = fs.readFileSync(shellLog, 'utf8');
    expect(argv).toContain('scripts/deploy.sh');
    expect(argv).not.toContain(id);
  });
});

describe('scripts/cdk-destroy.sh (make destroy)', () => {
  let box: Sandbox;
  beforeAll(() => {
    box = sandbox();
  });
  afterAll(() => fs.rmSync(box.dir, { recursive: true, force: true }));
  const ctx = `-c region=eu-west-1 -c application_account_id=${APP} -c database_account_id=${DB} -c lambda_code_source=auto`;

  test('DatabaseStack first (its endpoints sit in the shared subnets), then ApplicationStack', () => {
    const r = box.run('cdk-destroy.sh', PROFILES);
    expect(r.status).toBe(0);
    expect(r.calls).toEqual([
      'aws sts get-caller-identity --profile app-admin --query Account --output text',
      'aws sts get-caller-identity --profile db-admin --query Account --output text',
      `cdk destroy DatabaseStack --force --profile db-admin ${ctx}`,
      `cdk destroy ApplicationStack --force --profile app-admin ${ctx}`,
    ]);
    expect(r.stdout).toContain('final snapshot is kept');
  });

  test('the synth behind cdk destroy gets a throwaway external ID through its environment, never the placeholder', () => {
    const r = box.run('cdk-destroy.sh', { ...PROFILES, EXTERNAL_ID: undefined });
    expect(r.status).toBe(0);
    const ids = idsInEnv(r, 'cdk');
    expect(ids).toHaveLength(2);
    expect(ids[0]).toMatch(/^destroy-only-[0-9a-f]{32}$/);
    expectNoLeak(r, ids[0]);
    expectIdOnlyInCdkEnv(r, ids[0]);
  });

  test('if DatabaseStack cannot be deleted, ApplicationStack is left alone', () => {
    const r = box.run('cdk-destroy.sh', { ...PROFILES, STUB_FAIL: 'cdk destroy DatabaseStack' });
    expect(r.status).toBe(1);
    expect(r.calls).toHaveLength(3);
    expect(lastErrorLine(r)).toMatch(/^destroy: error: 1\/2 \(destroy DatabaseStack\) failed \(exit 3\)/);
  });

  test('missing DB_PROFILE is one clear line', () => {
    const r = box.run('cdk-destroy.sh', { ...PROFILES, DB_PROFILE: undefined });
    expect(r.status).toBe(1);
    expect(r.calls).toEqual([]);
    expect(r.stderr).toMatch(/^destroy: error: DB_PROFILE is not set: usage: make destroy APP_PROFILE=/);
  });
});

describe('scripts/cdk-invoke.sh (make invoke)', () => {
  let box: Sandbox;
  beforeAll(() => {
    box = sandbox();
  });
  afterAll(() => fs.rmSync(box.dir, { recursive: true, force: true }));
  const OK = '{"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": "Database connection was successful!"}';

  test('invokes connectiontest-lambda and prints the payload', () => {
    const out = path.join(box.dir, 'response.json');
    const r = box.run('cdk-invoke.sh', { APP_PROFILE: 'app-admin', REGION: 'eu-west-1', RESPONSE_FILE: out, STUB_INVOKE_PAYLOAD: OK }, [
      ['lambda invoke', '{"StatusCode": 200, "ExecutedVersion": "$LATEST"}'],
    ]);
    expect(r.status).toBe(0);
    expect(r.calls).toEqual([
      `aws lambda invoke --function-name connectiontest-lambda --profile app-admin --region eu-west-1 --output json ${out}`,
    ]);
    expect(r.stdout).toContain(OK);
    expect(r.stdout).toContain('invoke: ok');
  });

  test('the function name is the one in cdk.json, the value the stack gives the function', () => {
    const name = repoContext().function_name;
    expect(name).toBe('connectiontest-lambda');
    synth().appTemplate.hasResourceProperties('AWS::Lambda::Function', { FunctionName: name });
    expect(fs.readFileSync(path.join(SCRIPTS, 'cdk-common.sh'), 'utf8')).not.toContain('connectiontest-lambda');
    expect(fs.readFileSync(path.join(SCRIPTS, 'cdk-invoke.sh'), 'utf8')).not.toContain('connectiontest-lambda');
  });

  test('a function error makes it exit 1 with a pointer to the stage', () => {
    const r = box.run(
      'cdk-invoke.sh',
      {
        APP_PROFILE: 'app-admin',
        REGION: 'eu-west-1',
        RESPONSE_FILE: path.join(box.dir, 'r.json'),
        STUB_INVOKE_PAYLOAD: '{"errorType":"AssumeRole","errorMessage":"AccessDenied ..."}',
      },
      [['lambda invoke', '{"StatusCode": 200, "FunctionError": "Unhandled", "ExecutedVersion": "$LATEST"}']],
    );
    expect(r.status).toBe(1);
    expect(r.stdout).toContain('"errorType":"AssumeRole"');
    expect(lastErrorLine(r)).toMatch(/^invoke: error: connectiontest-lambda returned a function error: errorType names the failing stage/);
  });
});
