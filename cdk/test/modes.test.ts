/**
 * database_user_auth "secret" (the application user's password in Secrets Manager) and
 * lambda_settings_from "parameters" (the function's settings in Parameter Store): what each
 * adds and takes away in both stacks. The default context is pinned by iam-mode-snapshot.
 */
import * as fs from 'fs';
import * as path from 'path';
import { Match, Template } from 'aws-cdk-lib/assertions';
import { logicalId, synth, Synthesized, TEST_EXTERNAL_ID } from './helpers';

const DB_ROLE_ARN = 'arn:aws:iam::222222222222:role/proxy-cross-account-rds-connect-role';
const SECRET_ARN = 'arn:aws:secretsmanager:us-east-1:222222222222:secret:ApplicationUserSecretA6CF3A7A-AbCdEf';
const VIA_SECRETS_MANAGER = { StringEquals: { 'kms:ViaService': 'secretsmanager.us-east-1.amazonaws.com' } };
const PROXY_HOST = 'connectiontest-read-only.endpoint.proxy-abc.us-east-1.rds.amazonaws.com';

/** Every statement of the policies attached to a role: inline ones and AWS::IAM::Policy resources. */
function roleStatements(t: Template, roleId: string): unknown[] {
  const role = t.findResources('AWS::IAM::Role')[roleId].Properties;
  const inline = (role.Policies ?? []).flatMap((p: { PolicyDocument: { Statement: unknown[] } }) => p.PolicyDocument.Statement);
  const attached = Object.values(t.findResources('AWS::IAM::Policy'))
    .filter((p) => JSON.stringify(p.Properties.Roles).includes(`"${roleId}"`))
    .flatMap((p) => p.Properties.PolicyDocument.Statement);
  return [...inline, ...attached];
}

describe('database_user_auth "secret": DatabaseStack', () => {
  let s: Synthesized;
  let t: Template;
  let secret: string;
  let key: string;
  let connectRole: string;
  beforeAll(() => {
    s = synth({ database_user_auth: 'secret' });
    t = s.dbTemplate;
    secret = logicalId(t, 'AWS::SecretsManager::Secret', '/ApplicationUserSecret/Secret/Resource');
    key = logicalId(t, 'AWS::KMS::Key', '/ApplicationUserSecret/Key/Resource');
    connectRole = logicalId(t, 'AWS::IAM::Role', '/CrossAccountConnectRole/Resource');
  });

  test('the secret: RDS JSON shape for the application user, a generated password, its own rotated key', () => {
    expect(t.findResources('AWS::SecretsManager::Secret')[secret].Properties).toMatchObject({
      GenerateSecretString: {
        SecretStringTemplate: JSON.stringify({ username: 'connectiontest', dbname: 'example_db' }),
        GenerateStringKey: 'password',
      },
      KmsKeyId: { 'Fn::GetAtt': [key, 'Arn'] },
    });
    expect(t.findResources('AWS::KMS::Key')[key].Properties).toMatchObject({ EnableKeyRotation: true });
    // Attached to the cluster: host, port and engine for the rotation function.
    t.hasResourceProperties('AWS::SecretsManager::SecretTargetAttachment', {
      SecretId: { Ref: secret },
      TargetId: { Ref: logicalId(t, 'AWS::RDS::DBCluster', '/Cluster/Resource') },
    });
  });

  test('resource policy: GetSecretValue for the role the Lambda assumes, and for no other principal', () => {
    const policies = Object.values(t.findResources('AWS::SecretsManager::ResourcePolicy')).filter((p) => p.Properties.SecretId.Ref === secret);
    expect(policies).toHaveLength(1);
    const allows = policies[0].Properties.ResourcePolicy.Statement.filter((st: { Effect: string }) => st.Effect === 'Allow');
    expect(allows).toEqual([
      {
        Sid: 'ApplicationReadsItsPassword',
        Effect: 'Allow',
        Action: 'secretsmanager:GetSecretValue',
        Principal: { AWS: { 'Fn::GetAtt': [connectRole, 'Arn'] } },
        Resource: '*',
      },
    ]);
  });

  test('key policy: the role may decrypt through Secrets Manager of this region only', () => {
    const statements = t.findResources('AWS::KMS::Key')[key].Properties.KeyPolicy.Statement;
    const forRole = statements.filter((st: { Principal: unknown }) => JSON.stringify(st.Principal).includes(connectRole));
    expect(forRole).toEqual([
      {
        Sid: 'ApplicationDecryptsItsPasswordThroughSecretsManager',
        Effect: 'Allow',
        Action: 'kms:Decrypt',
        Principal: { AWS: { 'Fn::GetAtt': [connectRole, 'Arn'] } },
        Resource: '*',
        Condition: VIA_SECRETS_MANAGER,
      },
    ]);
    // No statement of the key names a principal of the application account.
    expect(JSON.stringify(statements)).not.toContain('111111111111');
  });

  test("the role's identity policy: GetSecretValue on the secret and kms:Decrypt on its key, no rds-db:connect", () => {
    expect(roleStatements(t, connectRole)).toEqual([
      { Sid: 'ReadApplicationUserSecret', Effect: 'Allow', Action: 'secretsmanager:GetSecretValue', Resource: { Ref: secret } },
      {
        Sid: 'DecryptApplicationUserSecret',
        Effect: 'Allow',
        Action: 'kms:Decrypt',
        Resource: { 'Fn::GetAtt': [key, 'Arn'] },
        Condition: VIA_SECRETS_MANAGER,
      },
    ]);
    // Still trusted by the Lambda's role alone, with the external ID.
    expect(t.findResources('AWS::IAM::Role')[connectRole].Properties.AssumeRolePolicyDocument.Statement).toEqual([
      {
        Action: 'sts:AssumeRole',
        Effect: 'Allow',
        Principal: { AWS: 'arn:aws:iam::111111111111:role/connectiontest-lambda-role' },
        Condition: { StringEquals: { 'sts:ExternalId': TEST_EXTERNAL_ID } },
      },
    ]);
  });

  test('the proxy authenticates the application user with the secret: SCRAM-SHA-256, IAM off, TLS required', () => {
    const proxy = Object.values(t.findResources('AWS::RDS::DBProxy'))[0].Properties;
    expect(proxy.Auth).toEqual([{ AuthScheme: 'SECRETS', SecretArn: { Ref: secret }, IAMAuth: 'DISABLED', ClientPasswordAuthType: 'POSTGRES_SCRAM_SHA_256' }]);
    expect(proxy.DefaultAuthScheme).toBeUndefined();
    expect(proxy.RequireTLS).toBe(true);
    // Its role reads that one secret and decrypts it; it no longer logs in with IAM.
    const proxyRole = logicalId(t, 'AWS::IAM::Role', '/ProxyRole/Resource');
    expect(roleStatements(t, proxyRole)).toEqual([
      { Effect: 'Allow', Action: ['secretsmanager:DescribeSecret', 'secretsmanager:GetSecretValue'], Resource: { Ref: secret } },
      { Effect: 'Allow', Action: 'kms:Decrypt', Resource: { 'Fn::GetAtt': [key, 'Arn'] } },
    ]);
  });

  test('the provisioning gives the user the secret password (no rds_iam), and may read that secret too', () => {
    const user = Object.values(t.findResources('Custom::ApplicationDatabaseUser'))[0];
    // Rotated (the default): sessions read-write, so single-user rotation can change the password.
    expect(user.Properties).toMatchObject({ Username: 'connectiontest', PasswordSecretArn: { Ref: secret }, ReadOnlySessions: 'false' });
    const provisionerRole = logicalId(t, 'AWS::IAM::Role', '/ProvisionerRole/Resource');
    const masterSecret = logicalId(t, 'AWS::SecretsManager::SecretTargetAttachment', '/Cluster/Secret/Attachment/Resource');
    expect(roleStatements(t, provisionerRole)).toEqual([
      { Effect: 'Allow', Action: ['secretsmanager:DescribeSecret', 'secretsmanager:GetSecretValue'], Resource: [{ Ref: secret }, { Ref: masterSecret }] },
    ]);
  });

  test('rotation: hosted single-user, every 30 days by default, in the VPC, only once the user has its password', () => {
    const attachment = logicalId(t, 'AWS::SecretsManager::SecretTargetAttachment', '/ApplicationUserSecret/Secret/Attachment/Resource');
    const rotation = logicalId(t, 'AWS::SecretsManager::RotationSchedule', '/ApplicationUserSecret/Secret/Attachment/Rotation/Resource');
    const schedule = t.findResources('AWS::SecretsManager::RotationSchedule')[rotation];
    expect(schedule.Properties).toMatchObject({
      SecretId: { Ref: attachment },
      RotationRules: { ScheduleExpression: 'rate(30 days)' },
      HostedRotationLambda: {
        RotationType: 'PostgreSQLSingleUser',
        KmsKeyArn: { 'Fn::GetAtt': [key, 'Arn'] },
        VpcSecurityGroupIds: { 'Fn::GetAtt': [logicalId(t, 'AWS::EC2::SecurityGroup', '/RotationSecurityGroup/Resource'), 'GroupId'] },
      },
    });
    expect(schedule.DependsOn).toEqual(['ApplicationUser']);
    expect(t.toJSON().Transform).toContain('AWS::SecretsManager-2024-09-16');
  });

  test('database_secret_rotation_days sets the interval; 0 turns rotation off', () => {
    const weekly = synth({ database_user_auth: 'secret', database_secret_rotation_days: 7 }).dbTemplate;
    weekly.hasResourceProperties('AWS::SecretsManager::RotationSchedule', { RotationRules: { ScheduleExpression: 'rate(7 days)' }, HostedRotationLambda: Match.anyValue() });
    const off = synth({ database_user_auth: 'secret', database_secret_rotation_days: 0 }).dbTemplate;
    // Nothing logs in as the user to change its password: its sessions start read-only again.
    expect(Object.values(off.findResources('Custom::ApplicationDatabaseUser'))[0].Properties.ReadOnlySessions).toBe('true');
    // Only the master secret's rotation is left.
    expect(Object.values(off.findResources('AWS::SecretsManager::RotationSchedule')).map((r) => r.Metadata['aws:cdk:path'])).toEqual([
      'DatabaseStack/Cluster/Secret/Attachment/RotationSchedule/Resource',
    ]);
  });

  test('outputs: the secret ARN next to the others', () => {
    const outputs = t.findOutputs('*');
    expect(outputs.ApplicationUserSecretArn.Value).toEqual({ Ref: secret });
    expect(Object.keys(outputs).sort()).toEqual([
      'ApplicationDatabaseUser',
      'ApplicationProxyEndpoint',
      'ApplicationUserSecretArn',
      'CrossAccountRoleArn',
      'ProxyEndpointReadOnly',
      'ProxyResourceId',
    ]);
  });
});

describe('database_user_auth "secret": ApplicationStack', () => {
  test('DB_SECRET_ARN from context, DB_USERNAME the password user; a Secrets Manager endpoint for the function only', () => {
    const t = synth({ database_user_auth: 'secret', application_db_secret_arn: SECRET_ARN }).appTemplate;
    t.hasResourceProperties('AWS::Lambda::Function', {
      FunctionName: 'connectiontest-lambda',
      Environment: {
        Variables: Match.exact({
          DATABASE_ACCOUNT_IAM_ROLE: DB_ROLE_ARN,
          RDS_PROXY_APPLICATION_ENDPOINT: '',
          DB_USERNAME: 'connectiontest',
          DBNAME: 'example_db',
          DB_PORT: '5432',
          EXTERNAL_ID: TEST_EXTERNAL_ID,
          DB_SECRET_ARN: SECRET_ARN,
        }),
      },
    });
    const endpointSg = logicalId(t, 'AWS::EC2::SecurityGroup', '/SecretsManagerEndpointSecurityGroup/Resource');
    t.hasResourceProperties('AWS::EC2::VPCEndpoint', {
      ServiceName: 'com.amazonaws.us-east-1.secretsmanager',
      PrivateDnsEnabled: true,
      SecurityGroupIds: [{ 'Fn::GetAtt': [endpointSg, 'GroupId'] }],
    });
    const lambdaSg = logicalId(t, 'AWS::EC2::SecurityGroup', '/LambdaSecurityGroup/Resource');
    const ingress = Object.values(t.findResources('AWS::EC2::SecurityGroupIngress')).filter((r) => r.Properties.GroupId['Fn::GetAtt'][0] === endpointSg);
    expect(ingress.map((r) => [r.Properties.SourceSecurityGroupId, r.Properties.FromPort])).toEqual([[{ 'Fn::GetAtt': [lambdaSg, 'GroupId'] }, 443]]);
  });

  test('before DatabaseStack exists (no secret ARN yet) DB_SECRET_ARN is left out, not empty', () => {
    const s = synth({ database_user_auth: 'secret' });
    const env = Object.values(s.appTemplate.findResources('AWS::Lambda::Function', { Properties: { FunctionName: 'connectiontest-lambda' } }))[0].Properties.Environment
      .Variables;
    expect(env).not.toHaveProperty('DB_SECRET_ARN');
  });
});

describe("the function's and its security group's descriptions follow the modes", () => {
  const describe_ = (context: Record<string, string>) => {
    const t = synth(context).appTemplate;
    const fn = Object.values(t.findResources('AWS::Lambda::Function', { Properties: { FunctionName: 'connectiontest-lambda' } }))[0];
    const sg = Object.values(t.findResources('AWS::EC2::SecurityGroup', { Properties: { GroupName: 'connectiontest-lambda-sg' } }))[0];
    return [fn.Properties.Description, sg.Properties.GroupDescription];
  };
  test('iam mode: the IAM token, STS only', () => {
    expect(describe_({})).toEqual([
      'Proves the cross-account path: AssumeRole, IAM token, TLS to the RDS Proxy endpoint, a read',
      'connectiontest-lambda: egress to the RDS Proxy endpoint (5432) and the STS endpoint (443) only',
    ]);
  });
  test('secret mode with settings in Parameter Store: the password, three endpoints', () => {
    expect(
      describe_({
        database_user_auth: 'secret',
        application_db_secret_arn: SECRET_ARN,
        lambda_settings_from: 'parameters',
      }),
    ).toEqual([
      'Proves the cross-account path: AssumeRole, the Secrets Manager password, TLS to the RDS Proxy endpoint, a read',
      'connectiontest-lambda: egress to the RDS Proxy endpoint (5432) and the STS, Secrets Manager and SSM endpoints (443) only',
    ]);
  });
});

describe('lambda_settings_from "parameters": ApplicationStack', () => {
  let t: Template;
  beforeAll(() => {
    t = synth({
      lambda_settings_from: 'parameters',
      database_user_auth: 'secret',
      application_db_secret_arn: SECRET_ARN,
      application_rds_proxy_endpoint: PROXY_HOST,
      db_connect_host: '10.0.16.10',
    }).appTemplate;
  });

  test('one String parameter per setting under the path; the function gets CONFIG_PARAMETER_PATH alone', () => {
    const parameters = Object.values(t.findResources('AWS::SSM::Parameter')).map((r) => r.Properties);
    expect(parameters.every((p) => p.Type === 'String')).toBe(true);
    expect(Object.fromEntries(parameters.map((p) => [p.Name, p.Value]))).toEqual({
      '/connectiontest/db/assume_role': DB_ROLE_ARN,
      '/connectiontest/db/hostname': PROXY_HOST,
      '/connectiontest/db/user': 'connectiontest',
      '/connectiontest/db/database': 'example_db',
      '/connectiontest/db/port': '5432',
      '/connectiontest/db/external_id': TEST_EXTERNAL_ID,
      '/connectiontest/db/connect_address': '10.0.16.10',
      '/connectiontest/db/secret_arn': SECRET_ARN,
    });
    const fn = Object.values(t.findResources('AWS::Lambda::Function', { Properties: { FunctionName: 'connectiontest-lambda' } }))[0];
    expect(fn.Properties.Environment.Variables).toEqual({ CONFIG_PARAMETER_PATH: '/connectiontest/db' });
    // Created after its settings, which it reads at init.
    expect(fn.DependsOn).toEqual(expect.arrayContaining(Object.keys(t.findResources('AWS::SSM::Parameter'))));
  });

  test('every parameter name is one the library reads (its environment mapping, rds-iam-auth/src/config/env.rs)', () => {
    // A name the library does not know is skipped with a warning at init, so a typo here
    // would silently drop a setting: check against the library's own table.
    const envRs = fs.readFileSync(path.join(__dirname, '..', '..', 'rds-iam-auth', 'src', 'config', 'env.rs'), 'utf8');
    const known = new Set([...envRs.matchAll(/setting: "([a-z_]+)"/g)].map((m) => m[1]));
    expect(known).toContain('connect_address');
    const names = Object.values(t.findResources('AWS::SSM::Parameter')).map((r) => String(r.Properties.Name).replace('/connectiontest/db/', ''));
    expect(names.filter((n) => !known.has(n))).toEqual([]);
  });

  test("the function's role: ssm:GetParametersByPath on the path and below it, nothing wider", () => {
    const role = logicalId(t, 'AWS::IAM::Role', '/LambdaRole/Resource');
    expect(roleStatements(t, role)).toEqual([
      { Sid: 'AssumeDatabaseAccountRole', Effect: 'Allow', Action: 'sts:AssumeRole', Resource: DB_ROLE_ARN },
      {
        Sid: 'ReadSettings',
        Effect: 'Allow',
        Action: 'ssm:GetParametersByPath',
        Resource: ['arn:aws:ssm:us-east-1:111111111111:parameter/connectiontest/db', 'arn:aws:ssm:us-east-1:111111111111:parameter/connectiontest/db/*'],
      },
    ]);
  });

  test('an SSM endpoint for the function only', () => {
    t.hasResourceProperties('AWS::EC2::VPCEndpoint', { ServiceName: 'com.amazonaws.us-east-1.ssm', PrivateDnsEnabled: true });
    t.resourceCountIs('AWS::EC2::VPCEndpoint', 3); // STS, Secrets Manager, SSM
  });

  test('the path comes from context; an empty setting (no endpoint yet) gets no parameter', () => {
    const other = synth({ lambda_settings_from: 'parameters', lambda_settings_parameter_path: '/team-a/connectiontest' }).appTemplate;
    const names = Object.values(other.findResources('AWS::SSM::Parameter')).map((r) => r.Properties.Name);
    expect(names.sort()).toEqual(['assume_role', 'database', 'external_id', 'port', 'user'].map((n) => `/team-a/connectiontest/${n}`));
    other.hasResourceProperties('AWS::Lambda::Function', {
      FunctionName: 'connectiontest-lambda',
      Environment: { Variables: { CONFIG_PARAMETER_PATH: '/team-a/connectiontest' } },
    });
  });

  test('DatabaseStack does not change with the settings source', () => {
    const a = synth({ lambda_settings_from: 'parameters' }).dbTemplate.toJSON();
    const b = synth({}).dbTemplate.toJSON();
    expect(a).toEqual(b);
  });
});
