/** Context validation: each bad value fails with a message naming the key and the shape. */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { App } from 'aws-cdk-lib';
import * as rds from 'aws-cdk-lib/aws-rds';
import { ContextError, DEFAULT_ENGINE_VERSION, isCidr, loadConfig } from '../lib/config';
import { context, REPO_ROOT } from './helpers';

function load(overrides: Record<string, unknown>) {
  return loadConfig(new App({ context: context(overrides) }).node);
}

function errorOf(overrides: Record<string, unknown>): ContextError {
  try {
    load(overrides);
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
    ['application_vpc_subnets', 'subnet-0123456789abcdef0,', 'no spaces or trailing comma'],
    ['application_vpc_subnets', 'subnet-0123456789abcdef0', 'at least two subnet ids'],
    ['application_vpc_subnets', 'subnet-0123456789abcdef0, subnet-0fedcba9876543210', 'no spaces'],
    ['application_vpc_subnets', 'subnet-xxx,subnet-yyy', 'at least two subnet ids'],
    ['application_rds_proxy_endpoint', 'not a host!', 'a DNS host name'],
    ['connectiontest_lambda_role_name', 'bad role name', 'an IAM role name'],
    ['database_account_rdsdb_connect_role_name', 'x'.repeat(65), 'an IAM role name'],
    ['database_username', '1user', 'a PostgreSQL identifier'],
    ['database_username', 'rdsadmin', 'not a name reserved by RDS'],
    ['database_name', 'my-db', 'a PostgreSQL identifier'],
    ['target_roles', 'READ_ONLY,WRITER', 'each READ_ONLY or READ_WRITE'],
    ['target_roles', 'READ_ONLY,READ_ONLY', 'each READ_ONLY or READ_WRITE'],
    ['external_id', 'x', 'an STS external id'],
    ['external_id', 'has space', 'an STS external id'],
    ['database_instance_type', 'db.t4g.medium', 'without the "db." prefix'],
    ['lambda_code_source', 'docker', '"auto"'],
    ['database_engine_version', '17', 'an Aurora PostgreSQL version "MAJOR.MINOR"'],
    ['database_engine_version', '9.6', 'an Aurora PostgreSQL version "MAJOR.MINOR"'],
  ])('%s = %j is rejected', (key, value, shape) => {
    const e = errorOf({ [key]: value });
    expect(e.key).toBe(key);
    expect(e.message).toContain(`context "${key}" is invalid`);
    expect(e.message).toContain(shape);
    expect(e.message).not.toContain('\n');
  });

  test.each(['database_account_id', 'application_vpc_id', 'external_id', 'target_roles', 'application_vpc_subnets'])(
    'missing %s is reported with how to set it',
    (key) => {
      const e = errorOf({ [key]: undefined });
      expect(e.key).toBe(key);
      expect(e.message).toMatch(new RegExp(`^context "${key}" is missing: expected .+ \\(set it in cdk.json under "context" or pass -c ${key}=VALUE\\)$`));
    },
  );

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
