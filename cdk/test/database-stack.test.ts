import { Match } from 'aws-cdk-lib/assertions';
import { evaluate, logicalId, synth, Synthesized, TEST_EXTERNAL_ID } from './helpers';

const LAMBDA_ROLE_ARN = 'arn:aws:iam::111111111111:role/connectiontest-lambda-role';
const SUBNETS = ['subnet-0123456789abcdef0', 'subnet-0fedcba9876543210'];
/** Offline default of application_lambda_security_group_id (make deploy passes the real one). */
const LAMBDA_SG = 'sg-0123456789abcdef0';

describe('DatabaseStack', () => {
  let s: Synthesized;
  beforeAll(() => {
    s = synth();
  });

  test('is bound to the database account', () => {
    expect(s.database.account).toBe('222222222222');
    expect(s.database.region).toBe('us-east-1');
  });

  test('isolated VPC: no NAT, no internet gateway; Secrets Manager endpoint for rotation', () => {
    const t = s.dbTemplate;
    t.hasResourceProperties('AWS::EC2::VPC', { CidrBlock: '10.0.0.0/24' });
    t.resourceCountIs('AWS::EC2::NatGateway', 0);
    t.resourceCountIs('AWS::EC2::InternetGateway', 0);
    t.resourceCountIs('AWS::EC2::Route', 0);
    t.resourceCountIs('AWS::EC2::FlowLog', 1);
    t.hasResourceProperties('AWS::EC2::VPCEndpoint', {
      ServiceName: 'com.amazonaws.us-east-1.secretsmanager',
      VpcEndpointType: 'Interface',
      PrivateDnsEnabled: true,
    });
  });

  test('Aurora PostgreSQL 17, IAM auth, encrypted, the master user, a writer and a reader with enhanced monitoring', () => {
    const t = s.dbTemplate;
    t.hasResourceProperties('AWS::RDS::DBCluster', {
      Engine: 'aurora-postgresql',
      EngineVersion: '17.9',
      DBClusterParameterGroupName: 'default.aurora-postgresql17',
      EnableIAMDatabaseAuthentication: true,
      StorageEncrypted: true,
      MasterUsername: 'dbadmin',
      DatabaseName: 'example_db',
      Port: 5432,
    });
    // Storage on the AWS managed key: the final snapshot outlives this stack's own key.
    expect(Object.values(t.findResources('AWS::RDS::DBCluster'))[0].Properties.KmsKeyId).toBeUndefined();
    t.resourceCountIs('AWS::RDS::DBInstance', 2);
    const instances = Object.entries(t.findResources('AWS::RDS::DBInstance'));
    const monitoringRole = logicalId(t, 'AWS::IAM::Role', '/Cluster/MonitoringRole/Resource');
    for (const [, i] of instances) {
      expect(i.Properties).toMatchObject({
        Engine: 'aurora-postgresql',
        PubliclyAccessible: false,
        DBInstanceClass: 'db.t4g.medium',
        MonitoringInterval: 60,
        MonitoringRoleArn: { 'Fn::GetAtt': [monitoringRole, 'Arn'] },
      });
    }
    expect(instances.map(([, i]) => i.Metadata['aws:cdk:path']).sort()).toEqual([
      'DatabaseStack/Cluster/Reader/Resource',
      'DatabaseStack/Cluster/Writer/Resource',
    ]);
  });

  test('engine version and instance class follow context', () => {
    const t = synth({ database_engine_version: '16.6', database_instance_type: 'r7g.large' }).dbTemplate;
    t.hasResourceProperties('AWS::RDS::DBCluster', { EngineVersion: '16.6', DBClusterParameterGroupName: 'default.aurora-postgresql16' });
    t.allResourcesProperties('AWS::RDS::DBInstance', { DBInstanceClass: 'db.r7g.large' });
  });

  test('secret rotation runs in the VPC and can reach the cluster (5432) and Secrets Manager (443)', () => {
    const t = s.dbTemplate;
    const rotationSg = logicalId(t, 'AWS::EC2::SecurityGroup', '/RotationSecurityGroup/Resource');
    const clusterSg = logicalId(t, 'AWS::EC2::SecurityGroup', '/ClusterSecurityGroup/Resource');
    const endpointSg = logicalId(t, 'AWS::EC2::SecurityGroup', '/SecretsManagerEndpointSecurityGroup/Resource');
    t.hasResourceProperties('AWS::SecretsManager::RotationSchedule', { RotationRules: { ScheduleExpression: 'rate(30 days)' } });
    const rotation = Object.values(t.findResources('AWS::Serverless::Application'))[0].Properties.Parameters;
    expect(rotation.vpcSecurityGroupIds).toEqual({ 'Fn::GetAtt': [rotationSg, 'GroupId'] });
    const subnets = Object.keys(t.findResources('AWS::EC2::Subnet'));
    expect(evaluate(rotation.vpcSubnetIds, { [subnets[0]]: 'subnet-a', [subnets[1]]: 'subnet-b' })).toBe('subnet-a,subnet-b');
    // Secrets Manager through the VPC endpoint, not the public endpoint (no route to it).
    const smEndpoint = Object.keys(t.findResources('AWS::EC2::VPCEndpoint'))[0];
    expect(evaluate(rotation.endpoint, { [smEndpoint]: 'vpce-0abc', 'AWS::URLSuffix': 'amazonaws.com' })).toBe(
      'https://vpce-0abc.secretsmanager.us-east-1.amazonaws.com',
    );
    const egress = Object.values(t.findResources('AWS::EC2::SecurityGroupEgress'))
      .map((r) => r.Properties)
      .filter((p) => p.GroupId['Fn::GetAtt'][0] === rotationSg);
    expect(egress).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ DestinationSecurityGroupId: { 'Fn::GetAtt': [clusterSg, 'GroupId'] }, FromPort: { 'Fn::GetAtt': [logicalId(t, 'AWS::RDS::DBCluster', '/Cluster/Resource'), 'Endpoint.Port'] } }),
        expect.objectContaining({ DestinationSecurityGroupId: { 'Fn::GetAtt': [endpointSg, 'GroupId'] }, FromPort: 443, ToPort: 443 }),
      ]),
    );
    expect(egress).toHaveLength(2);
  });

  test('cluster security group admits only the proxy, the rotation function and the provisioning function', () => {
    const t = s.dbTemplate;
    const clusterSg = logicalId(t, 'AWS::EC2::SecurityGroup', '/ClusterSecurityGroup/Resource');
    const sources = Object.values(t.findResources('AWS::EC2::SecurityGroupIngress'))
      .map((r) => r.Properties)
      .filter((p) => p.GroupId['Fn::GetAtt'][0] === clusterSg)
      .map((p) => p.SourceSecurityGroupId['Fn::GetAtt'][0])
      .sort();
    expect(sources).toEqual(
      [
        logicalId(t, 'AWS::EC2::SecurityGroup', '/ProxySecurityGroup/Resource'),
        logicalId(t, 'AWS::EC2::SecurityGroup', '/RotationSecurityGroup/Resource'),
        logicalId(t, 'AWS::EC2::SecurityGroup', '/ProvisionerSecurityGroup/Resource'),
      ].sort(),
    );
    expect(t.findResources('AWS::EC2::SecurityGroup')[clusterSg].Properties.SecurityGroupIngress).toBeUndefined();
  });

  test('RDS Proxy: end-to-end IAM, TLS required, no secret attached, isolated subnets', () => {
    const t = s.dbTemplate;
    t.hasResourceProperties('AWS::RDS::DBProxy', {
      DBProxyName: 'connectiontest-proxy',
      EngineFamily: 'POSTGRESQL',
      RequireTLS: true,
      DefaultAuthScheme: 'IAM_AUTH',
      RoleArn: { 'Fn::GetAtt': [logicalId(t, 'AWS::IAM::Role', '/ProxyRole/Resource'), 'Arn'] },
    });
    // No Auth entry: the proxy holds no secret, not even the master user's.
    const proxy = Object.values(t.findResources('AWS::RDS::DBProxy'))[0].Properties;
    expect(proxy.Auth).toBeUndefined();
    t.hasResourceProperties('AWS::RDS::DBProxyTargetGroup', {
      DBClusterIdentifiers: [{ Ref: logicalId(t, 'AWS::RDS::DBCluster', '/Cluster/Resource') }],
    });
  });

  test("the proxy's role may only rds-db:connect to the cluster as the application user, and read no secret", () => {
    const t = s.dbTemplate;
    const roleId = logicalId(t, 'AWS::IAM::Role', '/ProxyRole/Resource');
    const role = t.findResources('AWS::IAM::Role')[roleId].Properties;
    expect(role.AssumeRolePolicyDocument.Statement).toEqual([{ Action: 'sts:AssumeRole', Effect: 'Allow', Principal: { Service: 'rds.amazonaws.com' } }]);
    expect(role.ManagedPolicyArns).toBeUndefined();
    const statements = role.Policies.flatMap((p: { PolicyDocument: { Statement: unknown[] } }) => p.PolicyDocument.Statement);
    expect(statements).toHaveLength(1);
    expect(statements[0]).toMatchObject({ Effect: 'Allow', Action: 'rds-db:connect' });
    const cluster = logicalId(t, 'AWS::RDS::DBCluster', '/Cluster/Resource');
    expect(evaluate(statements[0].Resource, { [`${cluster}.DBClusterResourceId`]: 'cluster-ABCDEFGHIJKL0123456789' })).toBe(
      'arn:aws:rds-db:us-east-1:222222222222:dbuser:cluster-ABCDEFGHIJKL0123456789/connectiontest',
    );
    const attached = Object.values(t.findResources('AWS::IAM::Policy')).filter((p) => JSON.stringify(p.Properties.Roles ?? []).includes(roleId));
    expect(attached).toEqual([]);
    // ... and no key policy names it (so it cannot decrypt the master secret either).
    expect(JSON.stringify(t.findResources('AWS::KMS::Key'))).not.toContain(roleId);
  });

  test('the application user is created at deploy time, separate from the master user', () => {
    const t = s.dbTemplate;
    const cluster = logicalId(t, 'AWS::RDS::DBCluster', '/Cluster/Resource');
    const user = Object.entries(t.findResources('Custom::ApplicationDatabaseUser'));
    expect(user).toHaveLength(1);
    const [id, res] = user[0];
    const masterSecret = logicalId(t, 'AWS::SecretsManager::SecretTargetAttachment', '/Cluster/Secret/Attachment/Resource');
    expect(res.Properties).toMatchObject({
      SecretArn: { Ref: masterSecret },
      Host: { 'Fn::GetAtt': [cluster, 'Endpoint.Address'] },
      Port: '5432',
      DatabaseName: 'example_db',
      Username: 'connectiontest',
      CodeVersion: expect.stringMatching(/^[0-9a-f]{16}$/),
    });
    expect(res.Properties.Username).not.toBe(t.findResources('AWS::RDS::DBCluster')[cluster].Properties.MasterUsername);
    // It runs after both instances exist and while the network path to the writer is open.
    expect(res.DependsOn).toEqual(
      expect.arrayContaining([
        ...Object.keys(t.findResources('AWS::RDS::DBInstance')),
        logicalId(t, 'AWS::EC2::SecurityGroup', '/ProvisionerSecurityGroup/Resource'),
        logicalId(t, 'AWS::EC2::VPCEndpoint', '/SecretsManagerEndpoint/Resource'),
        ...Object.keys(t.findResources('AWS::EC2::SecurityGroupIngress')),
      ]),
    );
    expect(t.findOutputs('ApplicationDatabaseUser').ApplicationDatabaseUser.Value).toEqual({ 'Fn::GetAtt': [id, 'Username'] });
  });

  test("the application user's grants are read-only: LOGIN, rds_iam, pg_read_all_data and nothing else", () => {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const provision = require('../lambda/provision-db-user/index.js');
    expect(provision.GRANTED_ROLES).toEqual(['pg_read_all_data', 'rds_iam']);
    const sql: string = provision.provisionSql('connectiontest', 'example_db');
    const grants = sql.match(/^\s*GRANT .*$/gm)!.map((l) => l.trim().replace(/;$/, ''));
    expect(grants).toEqual(['GRANT rds_iam TO "connectiontest"', 'GRANT pg_read_all_data TO "connectiontest"', 'GRANT CONNECT ON DATABASE "example_db" TO "connectiontest"']);
    expect(sql).toContain('ALTER ROLE "connectiontest" WITH LOGIN NOCREATEDB NOCREATEROLE INHERIT PASSWORD NULL');
    expect(sql).toContain('ALTER ROLE "connectiontest" SET default_transaction_read_only = on');
    expect(sql).not.toMatch(/pg_write_all_data|rds_superuser|SUPERUSER|GRANT ALL/);
    // (test/provision-db-user.test.ts runs these statements on a real PostgreSQL.)
  });

  test('the provisioning function: in the VPC, reads only the master secret, reaches only the cluster and Secrets Manager', () => {
    const t = s.dbTemplate;
    const fnId = logicalId(t, 'AWS::Lambda::Function', '/Provisioner/Resource');
    const fn = t.findResources('AWS::Lambda::Function')[fnId].Properties;
    const sg = logicalId(t, 'AWS::EC2::SecurityGroup', '/ProvisionerSecurityGroup/Resource');
    expect(fn).toMatchObject({
      Runtime: 'nodejs24.x',
      Handler: 'index.handler',
      ReservedConcurrentExecutions: 1,
      Environment: { Variables: { NODE_EXTRA_CA_CERTS: '/var/runtime/ca-cert.pem' } },
      VpcConfig: { SecurityGroupIds: [{ 'Fn::GetAtt': [sg, 'GroupId'] }] },
    });
    const roleId = logicalId(t, 'AWS::IAM::Role', '/ProvisionerRole/Resource');
    const policies = Object.values(t.findResources('AWS::IAM::Policy')).filter((p) => JSON.stringify(p.Properties.Roles).includes(roleId));
    expect(policies.flatMap((p) => p.Properties.PolicyDocument.Statement)).toEqual([
      {
        Action: ['secretsmanager:DescribeSecret', 'secretsmanager:GetSecretValue'],
        Effect: 'Allow',
        Resource: { Ref: logicalId(t, 'AWS::SecretsManager::SecretTargetAttachment', '/Cluster/Secret/Attachment/Resource') },
      },
    ]);
    // kms:Decrypt on the secret's key, through Secrets Manager only.
    const keyPolicy = Object.values(t.findResources('AWS::KMS::Key'))[0].Properties.KeyPolicy.Statement;
    expect(keyPolicy.filter((st: { Principal: unknown }) => JSON.stringify(st.Principal).includes(roleId))).toEqual([
      {
        Action: 'kms:Decrypt',
        Condition: { StringEquals: { 'kms:ViaService': 'secretsmanager.us-east-1.amazonaws.com' } },
        Effect: 'Allow',
        Principal: { AWS: { 'Fn::GetAtt': [roleId, 'Arn'] } },
        Resource: '*',
      },
    ]);
    const egress = Object.values(t.findResources('AWS::EC2::SecurityGroupEgress'))
      .map((r) => r.Properties)
      .filter((p) => p.GroupId['Fn::GetAtt'][0] === sg)
      .map((p) => [p.DestinationSecurityGroupId['Fn::GetAtt'][0], p.FromPort]);
    const cluster = logicalId(t, 'AWS::RDS::DBCluster', '/Cluster/Resource');
    expect(egress).toEqual(
      expect.arrayContaining([
        [logicalId(t, 'AWS::EC2::SecurityGroup', '/ClusterSecurityGroup/Resource'), { 'Fn::GetAtt': [cluster, 'Endpoint.Port'] }],
        [logicalId(t, 'AWS::EC2::SecurityGroup', '/SecretsManagerEndpointSecurityGroup/Resource'), 443],
      ]),
    );
    expect(egress).toHaveLength(2);
  });

  test('customer managed key (rotated) for the master secret and every log group', () => {
    const t = s.dbTemplate;
    const key = logicalId(t, 'AWS::KMS::Key', '/DatabaseKey/Resource');
    t.hasResourceProperties('AWS::KMS::Key', { EnableKeyRotation: true, PendingWindowInDays: 7 });
    t.hasResourceProperties('AWS::SecretsManager::Secret', { KmsKeyId: { 'Fn::GetAtt': [key, 'Arn'] } });
    const groups = Object.values(t.findResources('AWS::Logs::LogGroup'));
    expect(groups.length).toBe(3);
    for (const g of groups) expect(g.Properties.KmsKeyId).toEqual({ 'Fn::GetAtt': [key, 'Arn'] });
  });

  test('proxy endpoint READ_ONLY by default, in the shared application subnets, after the reader exists', () => {
    const t = s.dbTemplate;
    t.resourceCountIs('AWS::RDS::DBProxyEndpoint', 1);
    const endpointSg = logicalId(t, 'AWS::EC2::SecurityGroup', '/ProxyEndpointSecurityGroup/Resource');
    t.hasResource('AWS::RDS::DBProxyEndpoint', {
      Properties: {
        DBProxyEndpointName: 'connectiontest-read-only',
        TargetRole: 'READ_ONLY',
        VpcSubnetIds: SUBNETS,
        VpcSecurityGroupIds: [{ 'Fn::GetAtt': [endpointSg, 'GroupId'] }],
      },
      DependsOn: Match.arrayWith([Object.keys(t.findResources('AWS::RDS::DBProxyTargetGroup'))[0]]),
    });
    // ... and the target group waits for both instances, so READ_ONLY has a reader.
    const tg = Object.values(t.findResources('AWS::RDS::DBProxyTargetGroup'))[0];
    expect(tg.DependsOn).toEqual(expect.arrayContaining(Object.keys(t.findResources('AWS::RDS::DBInstance'))));
  });

  test("proxy endpoint security group lives in the application VPC and admits 5432 from the function's security group only, no CIDR", () => {
    const check = (t: typeof s.dbTemplate, sgId: string) => {
      const endpointSg = logicalId(t, 'AWS::EC2::SecurityGroup', '/ProxyEndpointSecurityGroup/Resource');
      const props = t.findResources('AWS::EC2::SecurityGroup')[endpointSg].Properties;
      expect(props.VpcId).toBe('vpc-0123456789abcdef0');
      expect(props.SecurityGroupIngress).toEqual([
        {
          SourceSecurityGroupId: sgId,
          // The group belongs to the application account, the owner of the shared VPC.
          SourceSecurityGroupOwnerId: '111111111111',
          FromPort: 5432,
          ToPort: 5432,
          IpProtocol: 'tcp',
          Description: 'PostgreSQL from connectiontest-lambda (its security group, in the application account)',
        },
      ]);
      expect(props.SecurityGroupEgress).toEqual([{ CidrIp: '255.255.255.255/32', Description: 'Disallow all traffic', FromPort: 252, IpProtocol: 'icmp', ToPort: 86 }]);
      // No rule of the stack admits an address range, the application VPC's least of all.
      const standalone = Object.values(t.findResources('AWS::EC2::SecurityGroupIngress')).map((r) => r.Properties);
      const inline = Object.values(t.findResources('AWS::EC2::SecurityGroup')).flatMap((r) => r.Properties.SecurityGroupIngress ?? []);
      for (const rule of [...standalone, ...inline]) expect(rule.CidrIp ?? rule.CidrIpv6).toBeUndefined();
      expect(JSON.stringify(t.toJSON())).not.toContain('10.0.16.');
    };
    check(s.dbTemplate, LAMBDA_SG);
    check(synth({ application_lambda_security_group_id: 'sg-0aaaaaaaaaaaaaaaa' }).dbTemplate, 'sg-0aaaaaaaaaaaaaaaa');
  });

  test('target roles are configurable: one endpoint and one output each, the first feeds the Lambda', () => {
    const t = synth({ target_roles: 'READ_WRITE,READ_ONLY' }).dbTemplate;
    t.resourceCountIs('AWS::RDS::DBProxyEndpoint', 2);
    t.hasResourceProperties('AWS::RDS::DBProxyEndpoint', { TargetRole: 'READ_WRITE', DBProxyEndpointName: 'connectiontest-read-write' });
    t.hasResourceProperties('AWS::RDS::DBProxyEndpoint', { TargetRole: 'READ_ONLY', DBProxyEndpointName: 'connectiontest-read-only' });
    const outputs = t.findOutputs('*');
    expect(outputs.ProxyEndpointReadWrite.Value).toEqual({ 'Fn::GetAtt': ['ReadWriteProxyEndpoint', 'Endpoint'] });
    expect(outputs.ProxyEndpointReadOnly.Value).toEqual({ 'Fn::GetAtt': ['ReadOnlyProxyEndpoint', 'Endpoint'] });
    expect(outputs.ApplicationProxyEndpoint.Value).toEqual({ 'Fn::GetAtt': ['ReadWriteProxyEndpoint', 'Endpoint'] });
  });

  test('role proxy-cross-account-rds-connect-role: trusted only by the Lambda role ARN with the external ID', () => {
    s.dbTemplate.hasResourceProperties('AWS::IAM::Role', {
      RoleName: 'proxy-cross-account-rds-connect-role',
      MaxSessionDuration: 3600,
      AssumeRolePolicyDocument: Match.exact({
        Version: '2012-10-17',
        Statement: [
          {
            Action: 'sts:AssumeRole',
            Effect: 'Allow',
            Principal: { AWS: LAMBDA_ROLE_ARN },
            Condition: { StringEquals: { 'sts:ExternalId': TEST_EXTERNAL_ID } },
          },
        ],
      }),
    });
  });

  test('role allows exactly rds-db:connect on the proxy resource id and the configured db user', () => {
    const t = s.dbTemplate;
    const roleId = logicalId(t, 'AWS::IAM::Role', '/CrossAccountConnectRole/Resource');
    const role = t.findResources('AWS::IAM::Role')[roleId].Properties;
    expect(role.Policies).toHaveLength(1);
    const statements = role.Policies[0].PolicyDocument.Statement;
    expect(statements).toHaveLength(1);
    expect(statements[0]).toMatchObject({ Sid: 'ConnectThroughProxy', Effect: 'Allow', Action: 'rds-db:connect' });
    expect(statements[0].Condition).toBeUndefined();
    // What the resource becomes with a real proxy ARN (field 6 is "prx-<id>").
    const proxy = logicalId(t, 'AWS::RDS::DBProxy', '/Proxy/Resource');
    const arn = 'arn:aws:rds:us-east-1:222222222222:db-proxy:prx-0123456789abcdef0';
    expect(evaluate(statements[0].Resource, { [`${proxy}.DBProxyArn`]: arn })).toBe(
      'arn:aws:rds-db:us-east-1:222222222222:dbuser:prx-0123456789abcdef0/connectiontest',
    );
    // No other policy is attached to the role.
    const attached = Object.values(t.findResources('AWS::IAM::Policy')).filter((p) => JSON.stringify(p.Properties.Roles ?? []).includes(roleId));
    expect(attached).toEqual([]);
  });

  test('the db user in rds-db:connect follows context and is never the master user', () => {
    const t = synth({ database_username: 'app_reader', database_master_username: 'root_admin' }).dbTemplate;
    const role = t.findResources('AWS::IAM::Role')[logicalId(t, 'AWS::IAM::Role', '/CrossAccountConnectRole/Resource')].Properties;
    const proxy = logicalId(t, 'AWS::RDS::DBProxy', '/Proxy/Resource');
    expect(
      evaluate(role.Policies[0].PolicyDocument.Statement[0].Resource, {
        [`${proxy}.DBProxyArn`]: 'arn:aws:rds:us-east-1:222222222222:db-proxy:prx-0abc',
      }),
    ).toBe('arn:aws:rds-db:us-east-1:222222222222:dbuser:prx-0abc/app_reader');
    t.hasResourceProperties('AWS::RDS::DBCluster', { MasterUsername: 'root_admin' });
    t.hasResourceProperties('Custom::ApplicationDatabaseUser', { Username: 'app_reader' });
    expect(JSON.stringify(t.findResources('AWS::IAM::Role'))).not.toContain('root_admin');
  });

  test('no IAM statement in the stack grants Resource "*"', () => {
    const t = s.dbTemplate;
    const statements = [
      ...Object.values(t.findResources('AWS::IAM::Role')).flatMap((r) =>
        (r.Properties.Policies ?? []).flatMap((p: { PolicyDocument: { Statement: unknown[] } }) => p.PolicyDocument.Statement),
      ),
      ...Object.values(t.findResources('AWS::IAM::Policy')).flatMap((p) => p.Properties.PolicyDocument.Statement),
    ];
    expect(statements.length).toBeGreaterThan(0);
    for (const st of statements as { Resource: unknown }[]) {
      expect([st.Resource].flat()).not.toContain('*');
    }
  });

  test('outputs: every endpoint, the Lambda endpoint, the role ARN and the proxy resource id', () => {
    const outputs = s.dbTemplate.findOutputs('*');
    expect(Object.keys(outputs).sort()).toEqual(['ApplicationDatabaseUser', 'ApplicationProxyEndpoint', 'CrossAccountRoleArn', 'ProxyEndpointReadOnly', 'ProxyResourceId']);
    expect(outputs.ApplicationProxyEndpoint.Value).toEqual({ 'Fn::GetAtt': ['ReadOnlyProxyEndpoint', 'Endpoint'] });
  });
});
