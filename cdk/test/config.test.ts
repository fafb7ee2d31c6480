/** Context validation: each bad value fails with a message naming the key and the shape. */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { App } from 'aws-cdk-lib';
import * as rds from 'aws-cdk-lib/aws-rds';
import { CONTEXT_KEYS, ContextError, DEFAULT_ENGINE_VERSION, isCidr, loadConfig } from '../lib/config';
import { context, REPO_ROOT, repoContext, TEST_ENV } from './helpers';

function load(overrides: Record<string, unknown>, env: Record<string, string | undefined> = TEST_ENV) {
  return loadConfig(new App({ context: context(overrides) }).node, env);
}

function errorOf(overrides: Record<string, unknown>, env: Record<string, string | undefined> = TEST_ENV): ContextError {
  try {
    load(overrides, env);
  } catch (e) {
    if (e instanceof ContextError) return e;
    throw e;
  }
  throw new Error(`no error for ${JSON.stringify(overrides)}`);
}

describe('context validation', () => {
  test('the placeholders in cdk.json are valid', () => {
    const cfg = load({});
    expect(cfg).toMatchObject({
      region: 'us-east-1',
      applicationAccountId: '111111111111',
      databaseAccountId: '222222222222',
      applicationVpcSubnets: ['subnet-0123456789abcdef0', 'subnet-0fedcba9876543210'],
      targetRoles: ['READ_ONLY'],
      applicationRdsProxyEndpoint: '',
      lambdaRoleName: 'connectiontest-lambda-role',
      databaseConnectRoleName: 'proxy-cross-account-rds-connect-role',
    });
  });

  test.each<[string, unknown, string]>([
    ['application_account_id', '12345', 'a 12-digit AWS account id'],
    ['application_account_id', 111111111111, 'written as a JSON string'],
    ['database_account_id', 'abcdefghijkl', 'a 12-digit AWS account id'],
    ['database_account_id', '111111111111', 'an account other than application_account_id'],
    ['region', 'us-east', 'an AWS region name'],
    ['application_vpc_cidr', '10.0.16.0/33', 'an IPv4 CIDR block'],
    ['application_vpc_cidr', '10.0.16.1/24', 'no host bits set'],
    ['database_vpc_cidr', '10.0.0.0/8', 'a prefix from /16 to /24'],
    ['database_vpc_cidr', '300.0.0.0/24', 'an IPv4 CIDR block'],
    ['application_vpc_id', 'vpc-xxx', 'a VPC id'],
    ['application_lambda_security_group_id', 'sg-xyz', 'a security group id'],
    ['application_lambda_security_group_id', 'subnet-0123456789abcdef0', 'a security group id'],
    ['application_vpc_subnets', 'subnet-0123456789abcdef0,', 'no spaces or trailing comma'],
    ['application_vpc_subnets', 'subnet-0123456789abcdef0', 'at least two subnet ids'],
    ['application_vpc_subnets', 'subnet-0123456789abcdef0, subnet-0fedcba9876543210', 'no spaces'],
    ['application_vpc_subnets', 'subnet-xxx,subnet-yyy', 'at least two subnet ids'],
    ['application_rds_proxy_endpoint', 'not a host!', 'a DNS host name'],
    ['connectiontest_lambda_role_name', 'bad role name', 'an IAM role name'],
    ['database_account_rdsdb_connect_role_name', 'x'.repeat(65), 'an IAM role name'],
    ['database_username', '1user', 'a PostgreSQL identifier'],
    ['database_username', 'rdsadmin', 'not a name reserved by PostgreSQL or RDS'],
    ['database_username', 'pg_monitor', 'not a name reserved by PostgreSQL or RDS'],
    ['database_username', 'rds_iam', 'not a name reserved by PostgreSQL or RDS'],
    ['database_username', 'dbadmin', 'other than database_master_username: the application must not log in as the master user'],
    ['database_username', 'DBAdmin', 'other than database_master_username'],
    ['database_master_username', 'rdsadmin', 'not a name reserved by PostgreSQL or RDS'],
    ['database_master_username', 'connectiontest', 'other than database_master_username'],
    ['function_name', 'bad name', 'a Lambda function name'],
    ['lambda_reserved_concurrency', 0, 'a whole number from 1 to 50'],
    ['lambda_reserved_concurrency', '51', 'a whole number from 1 to 50'],
    ['lambda_reserved_concurrency', 2.5, 'a whole number from 1 to 50'],
    ['alarm_email', 'not-an-address', 'an e-mail address'],
    ['alarm_topic_arn', 'arn:aws:sns:us-east-1:333333333333:alerts', 'an SNS topic ARN in the application account and region'],
    ['alarm_topic_arn', 'arn:aws:sns:eu-west-1:111111111111:alerts', 'an SNS topic ARN in the application account and region'],
    ['database_name', 'my-db', 'a PostgreSQL identifier'],
    ['target_roles', 'READ_ONLY,WRITER', 'each READ_ONLY or READ_WRITE'],
    ['target_roles', 'READ_ONLY,READ_ONLY', 'each READ_ONLY or READ_WRITE'],
    ['external_id', 'x', 'an STS external id'],
    ['external_id', 'has space', 'an STS external id'],
    ['database_instance_type', 'db.t4g.medium', 'without the "db." prefix'],
    ['lambda_code_source', 'docker', '"auto"'],
    ['database_engine_version', '17', 'an Aurora PostgreSQL version "MAJOR.MINOR"'],
    ['database_engine_version', '9.6', 'an Aurora PostgreSQL version "MAJOR.MINOR"'],
    ['database_engine_version', '14.17', 'from 15 on (the read-only application user relies on pg_read_all_data'],
    ['database_user_auth', 'password', '"iam" (IAM auth tokens, the default) or "secret"'],
    ['database_user_auth', 'IAM', '"iam" (IAM auth tokens, the default) or "secret"'],
    ['database_secret_rotation_days', -1, 'a whole number of days from 0 (no rotation) to 365'],
    ['database_secret_rotation_days', '366', 'a whole number of days from 0 (no rotation) to 365'],
    ['database_secret_rotation_days', 'monthly', 'a whole number of days from 0 (no rotation) to 365'],
    ['application_db_secret_arn', 'connectiontest-app-secret', 'the ARN of a Secrets Manager secret in database_account_id and region'],
    ['application_db_secret_arn', 'arn:aws:secretsmanager:us-east-1:111111111111:secret:app-AbCdEf', 'in database_account_id and region'],
    ['application_db_secret_arn', 'arn:aws:secretsmanager:eu-west-1:222222222222:secret:app-AbCdEf', 'in database_account_id and region'],
    ['application_db_secret_arn', 'arn:aws:ssm:us-east-1:222222222222:parameter/app', 'the ARN of a Secrets Manager secret'],
    ['lambda_settings_from', 'ssm', '"environment" (environment variables, the default) or "parameters"'],
    ['lambda_settings_parameter_path', 'connectiontest/db', 'a Parameter Store path such as "/connectiontest/db"'],
    ['lambda_settings_parameter_path', '/connectiontest/db/', 'no trailing "/"'],
    ['lambda_settings_parameter_path', '/connection test', 'a Parameter Store path'],
    ['lambda_settings_parameter_path', '/aws/connectiontest', 'not under /aws or /ssm'],
    ['lambda_settings_parameter_path', '/SSM', 'not under /aws or /ssm'],
    ['lambda_settings_parameter_path', '/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o', 'at most 14 levels'],
  ])('%s = %j is rejected', (key, value, shape) => {
    const e = errorOf({ [key]: value });
    // A clash between the two users is reported on database_username.
    expect(e.key).toBe(key === 'database_master_username' && value === 'connectiontest' ? 'database_username' : key);
    if (e.key !== key) return;
    expect(e.message).toContain(`context "${key}" is invalid`);
    expect(e.message).toContain(shape);
    expect(e.message).not.toContain('\n');
  });

  test.each(['database_account_id', 'application_vpc_id', 'target_roles', 'application_vpc_subnets'])(
    'missing %s is reported with how to set it',
    (key) => {
      const e = errorOf({ [key]: undefined });
      expect(e.key).toBe(key);
      expect(e.message).toMatch(new RegExp(`^context "${key}" is missing: expected .+ \\(set it in cdk.json under "context" or pass -c ${key}=VALUE\\)$`));
    },
  );

  test("the function's security group id: an offline placeholder by default, make deploy's value otherwise", () => {
    expect(load({}).applicationLambdaSecurityGroupId).toBe('sg-0123456789abcdef0');
    expect(load({ application_lambda_security_group_id: 'sg-0aaaaaaaaaaaaaaaa' }).applicationLambdaSecurityGroupId).toBe('sg-0aaaaaaaaaaaaaaaa');
  });

  test('the master user defaults to dbadmin; the application user is configured separately', () => {
    const cfg = load({ database_master_username: undefined });
    expect(cfg.databaseMasterUsername).toBe('dbadmin');
    expect(cfg.databaseUsername).toBe('connectiontest');
  });

  test('reserved concurrency, alarm targets and the function name come from context', () => {
    expect(load({}).lambdaReservedConcurrency).toBe(5);
    expect(load({ lambda_reserved_concurrency: '3' }).lambdaReservedConcurrency).toBe(3);
    expect(load({ lambda_reserved_concurrency: undefined }).lambdaReservedConcurrency).toBe(5);
    expect(load({ alarm_email: 'ops@example.com' }).alarmEmail).toBe('ops@example.com');
    expect(load({ alarm_topic_arn: 'arn:aws:sns:us-east-1:111111111111:alerts' }).alarmTopicArn).toBe('arn:aws:sns:us-east-1:111111111111:alerts');
    expect(load({ function_name: 'orders-db-check' }).functionName).toBe('orders-db-check');
  });

  test('alarm_email and alarm_topic_arn together are refused', () => {
    const e = errorOf({ alarm_email: 'ops@example.com', alarm_topic_arn: 'arn:aws:sns:us-east-1:111111111111:alerts' });
    expect(e.key).toBe('alarm_topic_arn');
    expect(e.message).toBe(
      'context "alarm_email" and "alarm_topic_arn" are both set: set one (alarm_email creates a topic, alarm_topic_arn uses yours), or neither for an alarm without an action',
    );
  });

  describe('external_id: refused on every synth when it is the placeholder or short, whatever lambda_code_source', () => {
    const HOW =
      "run 'make deploy EXTERNAL_ID=generate ...', or give your own in CONNECTIONTEST_EXTERNAL_ID (the environment variable make deploy sets for cdk) or as \"external_id\" in cdk.json";
    const SOURCES = ['auto', 'zip', 'stand-in'];

    test.each(SOURCES)('the shipped placeholder is refused with lambda_code_source %s', (source) => {
      const e = errorOf({ lambda_code_source: source, external_id: 'connectiontest-change-me' });
      expect(e.key).toBe('external_id');
      expect(e.message).toBe(`context "external_id" is the shipped placeholder: every synth needs an external ID of your own, at least 16 characters: ${HOW}`);
    });

    test.each(SOURCES)('fewer than 16 characters is refused with lambda_code_source %s', (source) => {
      const e = errorOf({ lambda_code_source: source, external_id: 'short-id-123456' });
      expect(e.key).toBe('external_id');
      expect(e.message).toBe(`context "external_id" is only 15 characters long: every synth needs an external ID of your own, at least 16 characters: ${HOW}`);
    });

    test("cdk.json's own value is the placeholder, so a synth from cdk.json alone is refused", () => {
      expect(repoContext().external_id).toBe('connectiontest-change-me');
      expect(errorOf({ external_id: repoContext().external_id }).key).toBe('external_id');
    });

    test('16 characters or more is accepted', () => {
      expect(load({ lambda_code_source: 'stand-in', external_id: 'a'.repeat(16) }).externalId).toBe('a'.repeat(16));
    });

    test('CONNECTIONTEST_EXTERNAL_ID in the environment wins over context, and is checked the same way', () => {
      const id = 'from-the-environment-0123';
      expect(load({ external_id: 'connectiontest-change-me' }, { CONNECTIONTEST_EXTERNAL_ID: id }).externalId).toBe(id);
      expect(load({ external_id: undefined }, { CONNECTIONTEST_EXTERNAL_ID: id }).externalId).toBe(id);
      expect(load({}, { CONNECTIONTEST_EXTERNAL_ID: '' }).externalId).toBe(context().external_id);
      for (const source of SOURCES) {
        expect(errorOf({ lambda_code_source: source }, { CONNECTIONTEST_EXTERNAL_ID: 'connectiontest-change-me' }).message).toBe(
          `CONNECTIONTEST_EXTERNAL_ID is the shipped placeholder: every synth needs an external ID of your own, at least 16 characters: ${HOW}`,
        );
        expect(errorOf({ lambda_code_source: source }, { CONNECTIONTEST_EXTERNAL_ID: 'generate' }).message).toBe(
          `CONNECTIONTEST_EXTERNAL_ID is only 8 characters long: every synth needs an external ID of your own, at least 16 characters: ${HOW}`,
        );
      }
    });

    test('an external ID is never quoted back in an error', () => {
      const bad = 'has a space, but long enough';
      for (const e of [errorOf({ external_id: bad }), errorOf({}, { CONNECTIONTEST_EXTERNAL_ID: bad })]) {
        expect(e.key).toBe('external_id');
        expect(e.message).toContain('an STS external id');
        expect(e.message).toContain(`got ${bad.length} characters`);
        expect(e.message).not.toContain(bad);
      }
    });

    test('missing: says where to put it, and not on the command line', () => {
      expect(errorOf({ external_id: undefined }).message).toBe(
        'context "external_id" is missing: expected an STS external id: 2 to 1224 characters from A-Z a-z 0-9 + = , . @ : / _ - ' +
          '(set CONNECTIONTEST_EXTERNAL_ID in the environment or "external_id" in cdk.json; not -c external_id=..., which any local user can read in the process list)',
      );
    });
  });

  test('the auth and settings modes: defaults, and values from context', () => {
    expect(load({ database_user_auth: undefined, database_secret_rotation_days: undefined, lambda_settings_from: undefined, lambda_settings_parameter_path: undefined })).toMatchObject({
      databaseUserAuth: 'iam',
      databaseSecretRotationDays: 30,
      applicationDbSecretArn: '',
      lambdaSettingsFrom: 'environment',
      lambdaSettingsParameterPath: '/connectiontest/db',
    });
    const arn = 'arn:aws:secretsmanager:us-east-1:222222222222:secret:ApplicationUserSecretA6CF3A7A-AbCdEf';
    expect(
      load({
        database_user_auth: 'secret',
        database_secret_rotation_days: '0',
        application_db_secret_arn: arn,
        lambda_settings_from: 'parameters',
        lambda_settings_parameter_path: '/team-a/connectiontest.db',
      }),
    ).toMatchObject({
      databaseUserAuth: 'secret',
      databaseSecretRotationDays: 0,
      applicationDbSecretArn: arn,
      lambdaSettingsFrom: 'parameters',
      lambdaSettingsParameterPath: '/team-a/connectiontest.db',
    });
  });

  test('a secret ARN with database_user_auth "iam" is refused: the Lambda would never read it', () => {
    const e = errorOf({ application_db_secret_arn: 'arn:aws:secretsmanager:us-east-1:222222222222:secret:app-AbCdEf' });
    expect(e.key).toBe('application_db_secret_arn');
    expect(e.message).toBe(
      'context "application_db_secret_arn" is set but "database_user_auth" is not "secret": the Lambda would ignore it (clear it, or set database_user_auth to "secret")',
    );
  });

  test('every context key is in cdk.json and in the README configuration table', () => {
    const readme = fs.readFileSync(path.join(REPO_ROOT, 'README.md'), 'utf8');
    const ctx = JSON.parse(fs.readFileSync(path.join(REPO_ROOT, 'cdk.json'), 'utf8')).context;
    for (const key of CONTEXT_KEYS) {
      expect(readme).toContain(`\`${key}\``);
      if (!['db_ca_bundle', 'db_connect_host'].includes(key)) expect(Object.keys(ctx)).toContain(key);
    }
  });

  test('lists are accepted as JSON arrays too', () => {
    const cfg = load({ target_roles: ['READ_WRITE', 'READ_ONLY'], application_vpc_subnets: ['subnet-0123456789abcdef0', 'subnet-01234567'] });
    expect(cfg.targetRoles).toEqual(['READ_WRITE', 'READ_ONLY']);
    expect(cfg.applicationVpcSubnets).toEqual(['subnet-0123456789abcdef0', 'subnet-01234567']);
  });

  test('the default engine version is one this aws-cdk-lib knows', () => {
    expect(rds.AuroraPostgresEngineVersion.VER_17_9.auroraPostgresFullVersion).toBe(DEFAULT_ENGINE_VERSION);
    expect(load({ database_engine_version: undefined }).databaseEngineVersion).toBe(DEFAULT_ENGINE_VERSION);
  });

  test('isCidr', () => {
    expect(isCidr('10.0.0.0/16')).toBe(true);
    expect(isCidr('192.168.4.0/22')).toBe(true);
    expect(isCidr('192.168.5.0/22')).toBe(false);
    expect(isCidr('10.0.0.0')).toBe(false);
  });

  /** Runs bin/app.ts as `cdk synth` does, with `ctx` as its context and `env` added to a clean environment. */
  function runApp(ctx: Record<string, unknown>, env: Record<string, string> = {}) {
    const outdir = fs.mkdtempSync(path.join(os.tmpdir(), 'cdk-bin-'));
    const base = { ...process.env };
    delete base.CONNECTIONTEST_EXTERNAL_ID;
    const r = spawnSync(
      path.join(REPO_ROOT, 'cdk', 'node_modules', '.bin', 'ts-node'),
      ['--transpile-only', '--project', 'cdk/tsconfig.json', 'cdk/bin/app.ts'],
      { cwd: REPO_ROOT, env: { ...base, ...env, CDK_CONTEXT_JSON: JSON.stringify(ctx), CDK_OUTDIR: outdir }, encoding: 'utf8' },
    );
    const db = path.join(outdir, 'DatabaseStack.template.json');
    const dbTemplate = fs.existsSync(db) ? fs.readFileSync(db, 'utf8') : '';
    fs.rmSync(outdir, { recursive: true, force: true });
    return { ...r, dbTemplate };
  }

  test('bin/app.ts refuses the placeholder external ID on a plain synth (stand-in code) in one line', () => {
    const r = runApp({ ...context(), lambda_code_source: 'stand-in', external_id: 'connectiontest-change-me' });
    expect(r.status).toBe(1);
    expect(r.stderr).toBe(
      `error: context "external_id" is the shipped placeholder: every synth needs an external ID of your own, at least 16 characters: run 'make deploy EXTERNAL_ID=generate ...', or give your own in CONNECTIONTEST_EXTERNAL_ID (the environment variable make deploy sets for cdk) or as "external_id" in cdk.json\n`,
    );
  });

  test("bin/app.ts takes the external ID from CONNECTIONTEST_EXTERNAL_ID over cdk.json's placeholder", () => {
    const id = 'from-the-environment-0123456789';
    const r = runApp({ ...context(), lambda_code_source: 'stand-in', external_id: 'connectiontest-change-me' }, { CONNECTIONTEST_EXTERNAL_ID: id });
    expect(r.stderr).not.toMatch(/error/);
    expect(r.status).toBe(0);
    expect(JSON.stringify(JSON.parse(r.dbTemplate))).toContain(`"sts:ExternalId":"${id}"`);
    expect(r.dbTemplate).not.toContain('connectiontest-change-me');
  });

  test('bin/app.ts prints one line naming the key and exits 1 (what `cdk synth` shows)', () => {
    const outdir = fs.mkdtempSync(path.join(os.tmpdir(), 'cdk-bin-'));
    const ctx = { ...context(), database_account_id: '2222' };
    const r = spawnSync(
      path.join(REPO_ROOT, 'cdk', 'node_modules', '.bin', 'ts-node'),
      ['--transpile-only', '--project', 'cdk/tsconfig.json', 'cdk/bin/app.ts'],
      { cwd: REPO_ROOT, env: { ...process.env, CDK_CONTEXT_JSON: JSON.stringify(ctx), CDK_OUTDIR: outdir }, encoding: 'utf8' },
    );
    fs.rmSync(outdir, { recursive: true, force: true });
    expect(r.status).toBe(1);
    expect(r.stderr).toBe(
      'error: context "database_account_id" is invalid: expected a 12-digit AWS account id such as "111111111111" (a quoted string: leading zeros matter), got "2222"\n',
    );
  });
});
