/**
 * Context values of the app (cdk.json "context", or `-c key=value` on the command line),
 * plus the external ID from the environment (CONNECTIONTEST_EXTERNAL_ID), read and validated
 * in one place. Every problem is reported as a ContextError that names
 * the key and the shape it expects, so `cdk synth` fails with one readable line instead of
 * a CloudFormation error twenty minutes into a deployment.
 */
import { Node } from 'constructs';

/** A context value is missing or malformed. `key` is the context key at fault. */
export class ContextError extends Error {
  constructor(
    public readonly key: string,
    message: string,
  ) {
    super(message);
    this.name = 'ContextError';
  }
}

export type TargetRole = 'READ_ONLY' | 'READ_WRITE';
export type LambdaCodeSource = 'auto' | 'zip' | 'stand-in';
/** How the application user logs in: IAM auth tokens, or the password in a Secrets Manager secret. */
export type DatabaseUserAuth = 'iam' | 'secret';
/** Where connectiontest-lambda reads its settings: its environment, or Parameter Store. */
export type LambdaSettingsSource = 'environment' | 'parameters';

/** Everything both stacks need, already validated. */
export interface AppConfig {
  /** Region of both stacks (the proxy endpoints live in the application VPC, so one region). */
  readonly region: string;
  readonly applicationAccountId: string;
  readonly databaseAccountId: string;
  readonly applicationVpcCidr: string;
  readonly databaseVpcCidr: string;
  /** VPC and subnets of the application account, as ApplicationStack outputs them. */
  readonly applicationVpcId: string;
  readonly applicationVpcSubnets: string[];
  /**
   * Security group of connectiontest-lambda (ApplicationStack output LambdaSecurityGroupId):
   * the only source the proxy endpoints admit.
   */
  readonly applicationLambdaSecurityGroupId: string;
  /** Proxy endpoint host name the Lambda connects to; empty before DatabaseStack exists. */
  readonly applicationRdsProxyEndpoint: string;
  readonly lambdaRoleName: string;
  readonly databaseConnectRoleName: string;
  /** Name of connectiontest-lambda: one definition for the stacks and the scripts (cdk.json). */
  readonly functionName: string;
  /**
   * The application's database user: created at deploy time by DatabaseStack, read-only,
   * IAM authentication only (no password). DB_USERNAME and the rds-db:connect ARN name it.
   */
  readonly databaseUsername: string;
  /** The cluster's master user: used only by the provisioning function and secret rotation. */
  readonly databaseMasterUsername: string;
  readonly databaseName: string;
  readonly targetRoles: TargetRole[];
  /** sts:ExternalId of the cross-account trust: CONNECTIONTEST_EXTERNAL_ID, else context external_id. */
  readonly externalId: string;
  /** Reserved concurrency of connectiontest-lambda: the most connections it can open at once. */
  readonly lambdaReservedConcurrency: number;
  /** Where the errors alarm notifies: a new topic with this e-mail subscribed, or an existing topic. */
  readonly alarmEmail: string;
  readonly alarmTopicArn: string;
  readonly databaseInstanceType: string;
  /** Aurora PostgreSQL engine version, "MAJOR.MINOR" (e.g. "17.9"). */
  readonly databaseEngineVersion: string;
  readonly lambdaCodeSource: LambdaCodeSource;
  /** Path of the built function, relative to the repository root (or absolute). */
  readonly lambdaZipPath: string;
  /** Optional Lambda settings (DB_CA_BUNDLE, DB_CONNECT_HOST); empty string means "not set". */
  readonly dbCaBundle: string;
  readonly dbConnectHost: string;
  /**
   * "iam" (default): the application user has rds_iam and no password. "secret": it has the
   * password of a Secrets Manager secret in the database account (DatabaseStack output
   * ApplicationUserSecretArn), which the Lambda reads with the database-account role.
   */
  readonly databaseUserAuth: DatabaseUserAuth;
  /** Days between rotations of that secret; 0 turns rotation off. Secret mode only. */
  readonly databaseSecretRotationDays: number;
  /** The secret's ARN (DatabaseStack output ApplicationUserSecretArn); empty before DatabaseStack exists. */
  readonly applicationDbSecretArn: string;
  readonly lambdaSettingsFrom: LambdaSettingsSource;
  /** Parameter Store path of the Lambda's settings ("parameters" mode), e.g. "/connectiontest/db". */
  readonly lambdaSettingsParameterPath: string;
}

/** The keys, for documentation and for the tests. */
export const CONTEXT_KEYS = [
  'region',
  'application_account_id',
  'database_account_id',
  'application_vpc_cidr',
  'database_vpc_cidr',
  'application_vpc_id',
  'application_vpc_subnets',
  'application_lambda_security_group_id',
  'application_rds_proxy_endpoint',
  'connectiontest_lambda_role_name',
  'database_account_rdsdb_connect_role_name',
  'function_name',
  'database_username',
  'database_master_username',
  'database_name',
  'target_roles',
  'external_id',
  'lambda_reserved_concurrency',
  'alarm_email',
  'alarm_topic_arn',
  'database_instance_type',
  'database_engine_version',
  'lambda_code_source',
  'lambda_zip_path',
  'db_ca_bundle',
  'db_connect_host',
  'database_user_auth',
  'database_secret_rotation_days',
  'application_db_secret_arn',
  'lambda_settings_from',
  'lambda_settings_parameter_path',
] as const;

type Key = (typeof CONTEXT_KEYS)[number];

/** Newest Aurora PostgreSQL 17 minor that this aws-cdk-lib knows (AuroraPostgresEngineVersion.VER_17_9). */
export const DEFAULT_ENGINE_VERSION = '17.9';

const WHERE = 'set it in cdk.json under "context" or pass -c KEY=VALUE';

function missing(key: Key, shape: string): ContextError {
  return new ContextError(key, `context "${key}" is missing: expected ${shape} (${WHERE.replace('KEY', key)})`);
}

function invalid(key: Key, shape: string, value: unknown): ContextError {
  return new ContextError(key, `context "${key}" is invalid: expected ${shape}, got ${JSON.stringify(value)}`);
}

/** Reads a required string value; numbers are refused where they would lose meaning. */
function str(node: Node, key: Key, shape: string, opts: { optional?: boolean; fallback?: string } = {}): string {
  const raw: unknown = node.tryGetContext(key);
  if (raw === undefined || raw === null) {
    if (opts.fallback !== undefined) return opts.fallback;
    if (opts.optional) return '';
    throw missing(key, shape);
  }
  if (typeof raw !== 'string') throw invalid(key, `${shape}, written as a JSON string`, raw);
  const value = raw.trim();
  if (value === '' && !opts.optional && opts.fallback === undefined) throw missing(key, shape);
  return value;
}

function matching(node: Node, key: Key, shape: string, re: RegExp, opts: { optional?: boolean; fallback?: string } = {}): string {
  const value = str(node, key, shape, opts);
  if (value === '' && (opts.optional || opts.fallback !== undefined)) return opts.fallback ?? '';
  if (!re.test(value)) throw invalid(key, shape, value);
  return value;
}

const ACCOUNT_SHAPE = 'a 12-digit AWS account id such as "111111111111" (a quoted string: leading zeros matter)';
const ACCOUNT_RE = /^\d{12}$/;
const REGION_SHAPE = 'an AWS region name such as "us-east-1"';
const REGION_RE = /^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d$/;
const CIDR_SHAPE = 'an IPv4 CIDR block with a prefix from /16 to /24 and no host bits set, such as "10.0.16.0/24"';
const VPC_SHAPE = 'a VPC id such as "vpc-0123456789abcdef0" (ApplicationStack output ApplicationVpcId)';
const VPC_RE = /^vpc-([0-9a-f]{8}|[0-9a-f]{17})$/;
const SUBNETS_SHAPE =
  'at least two subnet ids separated by commas, no spaces or trailing comma, such as "subnet-0123456789abcdef0,subnet-0fedcba9876543210" (ApplicationStack output ApplicationSubnetIds)';
const SUBNET_RE = /^subnet-([0-9a-f]{8}|[0-9a-f]{17})$/;
const SG_SHAPE = 'a security group id such as "sg-0123456789abcdef0" (ApplicationStack output LambdaSecurityGroupId)';
const SG_RE = /^sg-([0-9a-f]{8}|[0-9a-f]{17})$/;
const HOST_SHAPE = 'a DNS host name such as "connectiontest-read-only.endpoint.proxy-abc.us-east-1.rds.amazonaws.com", or "" before DatabaseStack is deployed';
const HOST_RE = /^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;
const ROLE_SHAPE = 'an IAM role name: 1 to 64 characters from A-Z a-z 0-9 + = , . @ _ -';
const ROLE_RE = /^[\w+=,.@-]{1,64}$/;
const PG_IDENT_SHAPE = 'a PostgreSQL identifier: a letter, then up to 62 letters, digits or underscores';
const PG_IDENT_RE = /^[A-Za-z][A-Za-z0-9_]{0,62}$/;
const EXTERNAL_ID_SHAPE = 'an STS external id: 2 to 1224 characters from A-Z a-z 0-9 + = , . @ : / _ -';
const EXTERNAL_ID_RE = /^[\w+=,.@:/-]{2,1224}$/;
/** The external id shipped in cdk.json: refused by every synth (see externalIdOf). */
export const PLACEHOLDER_EXTERNAL_ID = 'connectiontest-change-me';
/** Shortest external id any synth accepts. */
export const MIN_EXTERNAL_ID_LENGTH = 16;
/**
 * The environment variable the external ID may come in, ahead of context "external_id". It is
 * how make deploy hands it to cdk: a `-c external_id=...` argument would sit in cdk's command
 * line, which any local user can read (/proc/PID/cmdline, ps), while a process's environment
 * is readable by its own user only. Not EXTERNAL_ID: that name is the Lambda's own setting,
 * which a shell that sourced the local stack's environment already carries.
 */
export const EXTERNAL_ID_ENV = 'CONNECTIONTEST_EXTERNAL_ID';
const EXTERNAL_ID_HOWTO =
  `run 'make deploy EXTERNAL_ID=generate ...', or give your own in ${EXTERNAL_ID_ENV} ` +
  '(the environment variable make deploy sets for cdk) or as "external_id" in cdk.json';
const FUNCTION_SHAPE = 'a Lambda function name: 1 to 64 characters from A-Z a-z 0-9 _ -';
const FUNCTION_RE = /^[A-Za-z0-9_-]{1,64}$/;
const CONCURRENCY_SHAPE = 'a whole number from 1 to 50 (the most connections the function may hold on the proxy at once)';
const EMAIL_SHAPE = 'an e-mail address such as "ops@example.com", or "" for none';
const EMAIL_RE = /^[^@\s]+@[^@\s]+\.[^@\s]+$/;
const TOPIC_SHAPE = 'an SNS topic ARN in the application account and region, such as "arn:aws:sns:us-east-1:111111111111:alerts", or "" for none';
const ROLES_SHAPE = 'a comma-separated list (or JSON array) of proxy endpoint target roles, each READ_ONLY or READ_WRITE, such as "READ_ONLY"';
const INSTANCE_SHAPE = 'an RDS instance class without the "db." prefix, such as "t4g.medium" or "r7g.large"';
const INSTANCE_RE = /^[a-z][a-z0-9-]*\.[a-z0-9]+$/;
// 15 and later: pg_read_all_data (14+) for the application user, and schema public without
// CREATE for PUBLIC (15+; on 14 schema public belongs to rdsadmin, so the master user cannot
// take that privilege away and the provisioning check would fail the deployment).
const ENGINE_SHAPE =
  'an Aurora PostgreSQL version "MAJOR.MINOR" from 15 on (the read-only application user relies on pg_read_all_data and on schema public without CREATE for PUBLIC), such as "17.9"';
const ENGINE_RE = /^1[5-9]\.\d{1,2}$/;
const CODE_SOURCE_SHAPE = '"auto" (the built zip if present, else a stand-in), "zip" (the built zip, required) or "stand-in"';
const USER_AUTH_SHAPE = '"iam" (IAM auth tokens, the default) or "secret" (the password in a Secrets Manager secret)';
const ROTATION_DAYS_SHAPE = 'a whole number of days from 0 (no rotation) to 365';
const SECRET_ARN_SHAPE =
  'the ARN of a Secrets Manager secret in database_account_id and region, such as ' +
  '"arn:aws:secretsmanager:us-east-1:222222222222:secret:connectiontest-app-AbCdEf" (DatabaseStack output ApplicationUserSecretArn), ' +
  'or "" before DatabaseStack is deployed';
const SETTINGS_FROM_SHAPE = '"environment" (environment variables, the default) or "parameters" (Parameter Store, under lambda_settings_parameter_path)';
const PARAMETER_PATH_SHAPE =
  'a Parameter Store path such as "/connectiontest/db": "/"-separated names of A-Z a-z 0-9 _ . -, at most 14 levels, ' +
  'not under /aws or /ssm, no trailing "/"';
const PARAMETER_PATH_RE = /^(\/[A-Za-z0-9_.-]+){1,14}$/;
/** Default of lambda_settings_parameter_path. */
export const DEFAULT_SETTINGS_PARAMETER_PATH = '/connectiontest/db';

/** Parses "a.b.c.d/n" and checks octets, prefix range and alignment. */
export function isCidr(value: string, minPrefix = 16, maxPrefix = 24): boolean {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/.exec(value);
  if (!m) return false;
  const octets = m.slice(1, 5).map(Number);
  const prefix = Number(m[5]);
  if (octets.some((o) => o > 255) || prefix < minPrefix || prefix > maxPrefix) return false;
  const addr = ((octets[0] << 24) >>> 0) + (octets[1] << 16) + (octets[2] << 8) + octets[3];
  const hostBits = 32 - prefix;
  return addr % 2 ** hostBits === 0;
}

function cidr(node: Node, key: Key): string {
  const value = str(node, key, CIDR_SHAPE);
  if (!isCidr(value)) throw invalid(key, CIDR_SHAPE, value);
  return value;
}

/** A list given as "a,b" (the only form `-c` can carry) or as a JSON array in cdk.json. */
function list(node: Node, key: Key, shape: string): string[] {
  const raw: unknown = node.tryGetContext(key);
  if (raw === undefined || raw === null || raw === '') throw missing(key, shape);
  let items: unknown[];
  if (Array.isArray(raw)) items = raw;
  else if (typeof raw === 'string') items = raw.split(',');
  else throw invalid(key, shape, raw);
  if (items.some((i) => typeof i !== 'string' || i.trim() === '' || i !== i.trim())) throw invalid(key, shape, raw);
  return items as string[];
}

/**
 * The external ID, from the environment (EXTERNAL_ID_ENV) or else context "external_id".
 * Every synth refuses the placeholder shipped in cdk.json and anything under 16 characters,
 * whatever lambda_code_source: a template is deployable by hand whichever code it packages,
 * and its trust policy must never accept a value anyone can read in this repository. Offline
 * synths (make synth, the tests) give one of their own. Errors never quote the value.
 */
function externalIdOf(node: Node, env: Record<string, string | undefined>): string {
  const fromEnv = env[EXTERNAL_ID_ENV]?.trim();
  const where = fromEnv ? EXTERNAL_ID_ENV : 'context "external_id"';
  let value: string;
  if (fromEnv) {
    value = fromEnv;
  } else {
    const raw: unknown = node.tryGetContext('external_id');
    if (raw === undefined || raw === null || (typeof raw === 'string' && raw.trim() === '')) {
      throw new ContextError(
        'external_id',
        `context "external_id" is missing: expected ${EXTERNAL_ID_SHAPE} (set ${EXTERNAL_ID_ENV} in the environment or "external_id" in cdk.json; ` +
          'not -c external_id=..., which any local user can read in the process list)',
      );
    }
    if (typeof raw !== 'string') throw new ContextError('external_id', `${where} is invalid: expected ${EXTERNAL_ID_SHAPE}, written as a JSON string`);
    value = raw.trim();
  }
  if (!EXTERNAL_ID_RE.test(value)) {
    throw new ContextError('external_id', `${where} is invalid: expected ${EXTERNAL_ID_SHAPE}, got ${value.length} characters`);
  }
  if (value === PLACEHOLDER_EXTERNAL_ID || value.length < MIN_EXTERNAL_ID_LENGTH) {
    throw new ContextError(
      'external_id',
      `${where} is ${value === PLACEHOLDER_EXTERNAL_ID ? 'the shipped placeholder' : `only ${value.length} characters long`}: ` +
        `every synth needs an external ID of your own, at least ${MIN_EXTERNAL_ID_LENGTH} characters: ${EXTERNAL_ID_HOWTO}`,
    );
  }
  return value;
}

/** PostgreSQL role names RDS or PostgreSQL keep for themselves. */
const RESERVED_DB_USERS = ['rdsadmin', 'rdsproxyadmin', 'rds_superuser', 'rds_iam', 'rds_replication', 'rds_password', 'public'];

function databaseUser(node: Node, key: Key, fallback?: string): string {
  const value = matching(node, key, PG_IDENT_SHAPE, PG_IDENT_RE, fallback === undefined ? {} : { fallback });
  const lower = value.toLowerCase();
  if (RESERVED_DB_USERS.includes(lower) || lower.startsWith('pg_') || lower.startsWith('rds_')) {
    throw invalid(key, `${PG_IDENT_SHAPE}, not a name reserved by PostgreSQL or RDS (rdsadmin, rdsproxyadmin, pg_*, rds_*)`, value);
  }
  return value;
}

/** One of `choices` (the first is the default when the key is absent or empty). */
function oneOf<T extends string>(node: Node, key: Key, shape: string, choices: readonly T[]): T {
  const value = str(node, key, shape, { fallback: choices[0] }) || choices[0];
  if (!(choices as readonly string[]).includes(value)) throw invalid(key, shape, value);
  return value as T;
}

/** A whole number in [min, max], written as a JSON number or a string (the form -c carries). */
function integer(node: Node, key: Key, shape: string, min: number, max: number, fallback: number): number {
  const raw: unknown = node.tryGetContext(key);
  if (raw === undefined || raw === null || raw === '') return fallback;
  const value = typeof raw === 'number' ? raw : typeof raw === 'string' && /^\d+$/.test(raw.trim()) ? Number(raw.trim()) : NaN;
  if (!Number.isInteger(value) || value < min || value > max) throw invalid(key, shape, raw);
  return value;
}

/** `env`: where CONNECTIONTEST_EXTERNAL_ID is looked up (the process environment by default). */
export function loadConfig(node: Node, env: Record<string, string | undefined> = process.env): AppConfig {
  const region = matching(node, 'region', REGION_SHAPE, REGION_RE);
  const applicationAccountId = matching(node, 'application_account_id', ACCOUNT_SHAPE, ACCOUNT_RE);
  const databaseAccountId = matching(node, 'database_account_id', ACCOUNT_SHAPE, ACCOUNT_RE);
  if (applicationAccountId === databaseAccountId) {
    throw new ContextError(
      'database_account_id',
      `context "database_account_id" is invalid: expected an account other than application_account_id (${applicationAccountId}); the subnets are shared with AWS RAM, which needs two accounts`,
    );
  }

  const subnets = list(node, 'application_vpc_subnets', SUBNETS_SHAPE);
  const rawSubnets: unknown = node.tryGetContext('application_vpc_subnets');
  if (subnets.length < 2 || subnets.some((s) => !SUBNET_RE.test(s)) || new Set(subnets).size !== subnets.length) {
    throw invalid('application_vpc_subnets', SUBNETS_SHAPE, rawSubnets);
  }

  const roles = list(node, 'target_roles', ROLES_SHAPE);
  if (roles.some((r) => r !== 'READ_ONLY' && r !== 'READ_WRITE') || new Set(roles).size !== roles.length) {
    throw invalid('target_roles', ROLES_SHAPE, node.tryGetContext('target_roles'));
  }

  const databaseUsername = databaseUser(node, 'database_username');
  const databaseMasterUsername = databaseUser(node, 'database_master_username', 'dbadmin');
  if (databaseUsername.toLowerCase() === databaseMasterUsername.toLowerCase()) {
    throw invalid(
      'database_username',
      `${PG_IDENT_SHAPE}, other than database_master_username: the application must not log in as the master user`,
      databaseUsername,
    );
  }

  const lambdaCodeSource = oneOf<LambdaCodeSource>(node, 'lambda_code_source', CODE_SOURCE_SHAPE, ['auto', 'zip', 'stand-in']);

  const databaseUserAuth = oneOf<DatabaseUserAuth>(node, 'database_user_auth', USER_AUTH_SHAPE, ['iam', 'secret']);
  const databaseSecretRotationDays = integer(node, 'database_secret_rotation_days', ROTATION_DAYS_SHAPE, 0, 365, 30);
  const applicationDbSecretArn = str(node, 'application_db_secret_arn', SECRET_ARN_SHAPE, { optional: true });
  if (applicationDbSecretArn) {
    const m = /^arn:aws[a-z-]*:secretsmanager:([a-z0-9-]+):(\d{12}):secret:[A-Za-z0-9/_+=.@-]+-[A-Za-z0-9]{6}$/.exec(applicationDbSecretArn);
    if (!m || m[1] !== region || m[2] !== databaseAccountId) throw invalid('application_db_secret_arn', SECRET_ARN_SHAPE, applicationDbSecretArn);
    if (databaseUserAuth !== 'secret') {
      throw new ContextError(
        'application_db_secret_arn',
        'context "application_db_secret_arn" is set but "database_user_auth" is not "secret": the Lambda would ignore it (clear it, or set database_user_auth to "secret")',
      );
    }
  }

  const lambdaSettingsFrom = oneOf<LambdaSettingsSource>(node, 'lambda_settings_from', SETTINGS_FROM_SHAPE, ['environment', 'parameters']);
  const lambdaSettingsParameterPath = matching(node, 'lambda_settings_parameter_path', PARAMETER_PATH_SHAPE, PARAMETER_PATH_RE, {
    fallback: DEFAULT_SETTINGS_PARAMETER_PATH,
  });
  // Parameter names under /aws and /ssm are reserved by AWS (any case).
  if (/^\/(aws|ssm)(\/|$)/i.test(lambdaSettingsParameterPath)) throw invalid('lambda_settings_parameter_path', PARAMETER_PATH_SHAPE, lambdaSettingsParameterPath);

  const externalId = externalIdOf(node, env);

  const alarmEmail = matching(node, 'alarm_email', EMAIL_SHAPE, EMAIL_RE, { optional: true });
  const alarmTopicArn = str(node, 'alarm_topic_arn', TOPIC_SHAPE, { optional: true });
  if (alarmTopicArn) {
    const m = /^arn:aws[a-z-]*:sns:([a-z0-9-]+):(\d{12}):[A-Za-z0-9_-]{1,256}$/.exec(alarmTopicArn);
    if (!m || m[1] !== region || m[2] !== applicationAccountId) throw invalid('alarm_topic_arn', TOPIC_SHAPE, alarmTopicArn);
  }
  if (alarmEmail && alarmTopicArn) {
    throw new ContextError(
      'alarm_topic_arn',
      'context "alarm_email" and "alarm_topic_arn" are both set: set one (alarm_email creates a topic, alarm_topic_arn uses yours), or neither for an alarm without an action',
    );
  }

  return {
    region,
    applicationAccountId,
    databaseAccountId,
    applicationVpcCidr: cidr(node, 'application_vpc_cidr'),
    databaseVpcCidr: cidr(node, 'database_vpc_cidr'),
    applicationVpcId: matching(node, 'application_vpc_id', VPC_SHAPE, VPC_RE),
    applicationVpcSubnets: subnets,
    applicationLambdaSecurityGroupId: matching(node, 'application_lambda_security_group_id', SG_SHAPE, SG_RE),
    applicationRdsProxyEndpoint: matching(node, 'application_rds_proxy_endpoint', HOST_SHAPE, HOST_RE, { optional: true }),
    lambdaRoleName: matching(node, 'connectiontest_lambda_role_name', ROLE_SHAPE, ROLE_RE),
    databaseConnectRoleName: matching(node, 'database_account_rdsdb_connect_role_name', ROLE_SHAPE, ROLE_RE),
    functionName: matching(node, 'function_name', FUNCTION_SHAPE, FUNCTION_RE),
    databaseUsername,
    databaseMasterUsername,
    databaseName: matching(node, 'database_name', PG_IDENT_SHAPE, PG_IDENT_RE),
    targetRoles: roles as TargetRole[],
    externalId,
    lambdaReservedConcurrency: integer(node, 'lambda_reserved_concurrency', CONCURRENCY_SHAPE, 1, 50, 5),
    alarmEmail,
    alarmTopicArn,
    databaseInstanceType: matching(node, 'database_instance_type', INSTANCE_SHAPE, INSTANCE_RE, { fallback: 't4g.medium' }),
    databaseEngineVersion: matching(node, 'database_engine_version', ENGINE_SHAPE, ENGINE_RE, { fallback: DEFAULT_ENGINE_VERSION }),
    lambdaCodeSource,
    lambdaZipPath: str(node, 'lambda_zip_path', 'a path to bootstrap.zip', { fallback: 'target/lambda/connection-test/bootstrap.zip' }),
    dbCaBundle: str(node, 'db_ca_bundle', 'a path to a PEM file inside the function package', { optional: true }),
    dbConnectHost: matching(node, 'db_connect_host', 'a host name or IPv4 address to dial instead of the endpoint', HOST_RE, { optional: true }),
    databaseUserAuth,
    databaseSecretRotationDays,
    applicationDbSecretArn,
    lambdaSettingsFrom,
    lambdaSettingsParameterPath,
  };
}

/** ARN of the role in the database account that the Lambda assumes. */
export function databaseConnectRoleArn(cfg: AppConfig, partition: string): string {
  return `arn:${partition}:iam::${cfg.databaseAccountId}:role/${cfg.databaseConnectRoleName}`;
}

/** ARN of the Lambda's role in the application account, the only principal the DB role trusts. */
export function lambdaRoleArn(cfg: AppConfig, partition: string): string {
  return `arn:${partition}:iam::${cfg.applicationAccountId}:role/${cfg.lambdaRoleName}`;
}

/** "READ_ONLY" -> "read-only", for resource names. */
export function roleSlug(role: TargetRole): string {
  return role.toLowerCase().replace('_', '-');
}

/** "READ_ONLY" -> "ReadOnly", for output and construct ids. */
export function rolePascal(role: TargetRole): string {
  return role
    .toLowerCase()
    .split('_')
    .map((w) => w[0].toUpperCase() + w.slice(1))
    .join('');
}
