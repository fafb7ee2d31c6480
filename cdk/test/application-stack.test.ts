import { Match } from 'aws-cdk-lib/assertions';
import { evaluate, logicalId, synth, Synthesized, TEST_EXTERNAL_ID } from './helpers';

const DB_ROLE_ARN = 'arn:aws:iam::222222222222:role/proxy-cross-account-rds-connect-role';

describe('ApplicationStack', () => {
  let s: Synthesized;
  beforeAll(() => {
    s = synth();
  });

  test('is bound to the application account and region from context', () => {
    expect(s.application.account).toBe('111111111111');
    expect(s.application.region).toBe('us-east-1');
  });

  test('VPC has isolated subnets only: no NAT gateway, no internet gateway', () => {
    const t = s.appTemplate;
    t.resourceCountIs('AWS::EC2::VPC', 1);
    t.hasResourceProperties('AWS::EC2::VPC', { CidrBlock: '10.0.16.0/24' });
    t.resourceCountIs('AWS::EC2::Subnet', 2);
    t.resourceCountIs('AWS::EC2::NatGateway', 0);
    t.resourceCountIs('AWS::EC2::InternetGateway', 0);
    t.resourceCountIs('AWS::EC2::Route', 0);
    t.resourceCountIs('AWS::EC2::FlowLog', 1);
  });

  test('STS is reached through an interface endpoint with private DNS', () => {
    s.appTemplate.hasResourceProperties('AWS::EC2::VPCEndpoint', {
      ServiceName: 'com.amazonaws.us-east-1.sts',
      VpcEndpointType: 'Interface',
      PrivateDnsEnabled: true,
    });
    s.appTemplate.resourceCountIs('AWS::EC2::VPCEndpoint', 1);
  });

  test('the subnets are shared with the database account through RAM, inside the organization', () => {
    const t = s.appTemplate;
    t.resourceCountIs('AWS::RAM::ResourceShare', 1);
    const share = Object.values(t.findResources('AWS::RAM::ResourceShare'))[0].Properties;
    expect(share.Principals).toEqual(['222222222222']);
    expect(share.AllowExternalPrincipals).toBe(false);
    const subnets = Object.keys(t.findResources('AWS::EC2::Subnet'));
    const refs = Object.fromEntries(subnets.map((id, i) => [id, `subnet-${i}`]));
    expect(evaluate(share.ResourceArns, refs)).toEqual([
      'arn:aws:ec2:us-east-1:111111111111:subnet/subnet-0',
      'arn:aws:ec2:us-east-1:111111111111:subnet/subnet-1',
    ]);
  });

  test('Lambda: name, runtime, architecture, handler, VPC placement', () => {
    const t = s.appTemplate;
    t.hasResourceProperties('AWS::Lambda::Function', {
      FunctionName: 'connectiontest-lambda',
      Runtime: 'provided.al2023',
      Architectures: ['arm64'],
      Handler: 'bootstrap',
      VpcConfig: {
        SubnetIds: Object.keys(t.findResources('AWS::EC2::Subnet')).map((id) => ({ Ref: id })),
        SecurityGroupIds: [{ 'Fn::GetAtt': [logicalId(t, 'AWS::EC2::SecurityGroup', '/LambdaSecurityGroup/Resource'), 'GroupId'] }],
      },
    });
  });

  test('Lambda environment is exactly the documented contract (no AWS_REGION: Lambda sets it)', () => {
    s.appTemplate.hasResourceProperties('AWS::Lambda::Function', {
      FunctionName: 'connectiontest-lambda',
      Environment: {
        Variables: Match.exact({
          DATABASE_ACCOUNT_IAM_ROLE: DB_ROLE_ARN,
          RDS_PROXY_APPLICATION_ENDPOINT: '',
          DB_USERNAME: 'connectiontest',
          DBNAME: 'example_db',
          DB_PORT: '5432',
          EXTERNAL_ID: TEST_EXTERNAL_ID,
        }),
      },
    });
  });

  test('optional DB_CA_BUNDLE, DB_CONNECT_HOST and the proxy endpoint come from context', () => {
    const t = synth({
      application_rds_proxy_endpoint: 'connectiontest-read-only.endpoint.proxy-abc.us-east-1.rds.amazonaws.com',
      db_ca_bundle: '/var/task/rds-ca.pem',
      db_connect_host: '127.0.0.1',
      database_username: 'reader_user',
      database_name: 'orders',
    }).appTemplate;
    t.hasResourceProperties('AWS::Lambda::Function', {
      Environment: {
        Variables: Match.exact({
          DATABASE_ACCOUNT_IAM_ROLE: DB_ROLE_ARN,
          RDS_PROXY_APPLICATION_ENDPOINT: 'connectiontest-read-only.endpoint.proxy-abc.us-east-1.rds.amazonaws.com',
          DB_USERNAME: 'reader_user',
          DBNAME: 'orders',
          DB_PORT: '5432',
          EXTERNAL_ID: TEST_EXTERNAL_ID,
          DB_CA_BUNDLE: '/var/task/rds-ca.pem',
          DB_CONNECT_HOST: '127.0.0.1',
        }),
      },
    });
  });

  test('role connectiontest-lambda-role: sts:AssumeRole on the one database role, VPC access policy, nothing else', () => {
    const t = s.appTemplate;
    t.hasResourceProperties('AWS::IAM::Role', {
      RoleName: 'connectiontest-lambda-role',
      AssumeRolePolicyDocument: {
        Statement: [{ Action: 'sts:AssumeRole', Effect: 'Allow', Principal: { Service: 'lambda.amazonaws.com' } }],
      },
      ManagedPolicyArns: [
        { 'Fn::Join': ['', ['arn:', { Ref: 'AWS::Partition' }, ':iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole']] },
      ],
      Policies: Match.exact([
        {
          PolicyName: 'AssumeDatabaseAccountRole',
          PolicyDocument: {
            Version: '2012-10-17',
            Statement: [{ Sid: 'AssumeDatabaseAccountRole', Effect: 'Allow', Action: 'sts:AssumeRole', Resource: DB_ROLE_ARN }],
          },
        },
      ]),
    });
    // No separate AWS::IAM::Policy attached to the Lambda role.
    const roleId = logicalId(t, 'AWS::IAM::Role', '/LambdaRole/Resource');
    const attached = Object.values(t.findResources('AWS::IAM::Policy')).filter((p) =>
      JSON.stringify(p.Properties.Roles ?? []).includes(roleId),
    );
    expect(attached).toEqual([]);
  });

  test('no IAM statement in the stack grants Resource "*"', () => {
    const statements = [
      ...Object.values(s.appTemplate.findResources('AWS::IAM::Role')).flatMap((r) =>
        (r.Properties.Policies ?? []).flatMap((p: { PolicyDocument: { Statement: unknown[] } }) => p.PolicyDocument.Statement),
      ),
      ...Object.values(s.appTemplate.findResources('AWS::IAM::Policy')).flatMap((p) => p.Properties.PolicyDocument.Statement),
    ];
    expect(statements.length).toBeGreaterThan(0);
    for (const st of statements as { Resource: unknown }[]) {
      expect([st.Resource].flat()).not.toContain('*');
    }
  });

  test('Lambda security group: egress 5432 to the shared subnets and 443 to the STS endpoint only', () => {
    const t = s.appTemplate;
    const lambdaSg = logicalId(t, 'AWS::EC2::SecurityGroup', '/LambdaSecurityGroup/Resource');
    const stsSg = logicalId(t, 'AWS::EC2::SecurityGroup', '/StsEndpointSecurityGroup/Resource');
    const sg = t.findResources('AWS::EC2::SecurityGroup')[lambdaSg].Properties;
    expect(sg.SecurityGroupIngress).toBeUndefined();
    expect(sg.SecurityGroupEgress).toEqual([
      { CidrIp: '10.0.16.0/26', Description: 'PostgreSQL to the RDS Proxy endpoints in shared subnet 1', FromPort: 5432, IpProtocol: 'tcp', ToPort: 5432 },
      { CidrIp: '10.0.16.64/26', Description: 'PostgreSQL to the RDS Proxy endpoints in shared subnet 2', FromPort: 5432, IpProtocol: 'tcp', ToPort: 5432 },
    ]);
    // The subnet ranges are exactly the VPC's two subnets, where the proxy endpoints live.
    const subnetCidrs = Object.values(t.findResources('AWS::EC2::Subnet')).map((r) => r.Properties.CidrBlock);
    expect(subnetCidrs).toEqual(['10.0.16.0/26', '10.0.16.64/26']);

    const egress = Object.values(t.findResources('AWS::EC2::SecurityGroupEgress')).map((r) => r.Properties);
    expect(egress).toEqual([
      {
        GroupId: { 'Fn::GetAtt': [lambdaSg, 'GroupId'] },
        DestinationSecurityGroupId: { 'Fn::GetAtt': [stsSg, 'GroupId'] },
        IpProtocol: 'tcp',
        FromPort: 443,
        ToPort: 443,
        Description: 'HTTPS from connectiontest-lambda to STS (AssumeRole)',
      },
    ]);
  });

  test('STS endpoint security group: ingress 443 from the Lambda only, no egress', () => {
    const t = s.appTemplate;
    const lambdaSg = logicalId(t, 'AWS::EC2::SecurityGroup', '/LambdaSecurityGroup/Resource');
    const stsSg = logicalId(t, 'AWS::EC2::SecurityGroup', '/StsEndpointSecurityGroup/Resource');
    const ingress = Object.values(t.findResources('AWS::EC2::SecurityGroupIngress')).map((r) => r.Properties);
    expect(ingress).toEqual([
      {
        GroupId: { 'Fn::GetAtt': [stsSg, 'GroupId'] },
        SourceSecurityGroupId: { 'Fn::GetAtt': [lambdaSg, 'GroupId'] },
        IpProtocol: 'tcp',
        FromPort: 443,
        ToPort: 443,
        Description: 'HTTPS from connectiontest-lambda to STS (AssumeRole)',
      },
    ]);
    expect(t.findResources('AWS::EC2::SecurityGroup')[stsSg].Properties.SecurityGroupEgress).toEqual([
      { CidrIp: '255.255.255.255/32', Description: 'Disallow all traffic', FromPort: 252, IpProtocol: 'icmp', ToPort: 86 },
    ]);
  });

  test('reserved concurrency caps the connections the function can hold on the proxy', () => {
    s.appTemplate.hasResourceProperties('AWS::Lambda::Function', { FunctionName: 'connectiontest-lambda', ReservedConcurrentExecutions: 5 });
    synth({ lambda_reserved_concurrency: 2 }).appTemplate.hasResourceProperties('AWS::Lambda::Function', { ReservedConcurrentExecutions: 2 });
  });

  test('log groups are encrypted with a rotated customer managed key that only CloudWatch Logs of this account may use', () => {
    const t = s.appTemplate;
    const key = logicalId(t, 'AWS::KMS::Key', '/ApplicationKey/Resource');
    t.hasResourceProperties('AWS::KMS::Key', { EnableKeyRotation: true });
    const groups = Object.values(t.findResources('AWS::Logs::LogGroup'));
    expect(groups).toHaveLength(2);
    for (const g of groups) expect(g.Properties.KmsKeyId).toEqual({ 'Fn::GetAtt': [key, 'Arn'] });
    const statements = t.findResources('AWS::KMS::Key')[key].Properties.KeyPolicy.Statement;
    expect(statements).toContainEqual(
      expect.objectContaining({
        Principal: { Service: 'logs.us-east-1.amazonaws.com' },
        Condition: { ArnLike: { 'kms:EncryptionContext:aws:logs:arn': 'arn:aws:logs:us-east-1:111111111111:log-group:*' } },
      }),
    );
  });

  test('the function name is one context value: function, log group, alarm, outputs follow it', () => {
    const t = synth({ function_name: 'orders-db-check' }).appTemplate;
    t.hasResourceProperties('AWS::Lambda::Function', { FunctionName: 'orders-db-check' });
    t.hasResourceProperties('AWS::Logs::LogGroup', { LogGroupName: '/aws/lambda/orders-db-check' });
    t.hasResourceProperties('AWS::CloudWatch::Alarm', { AlarmName: 'orders-db-check-errors' });
    expect(JSON.stringify(t.toJSON())).not.toContain('connectiontest-lambda"');
  });

  test('the alarm has no action unless asked; alarm_email makes an encrypted topic with the address subscribed', () => {
    const none = Object.values(s.appTemplate.findResources('AWS::CloudWatch::Alarm'))[0].Properties;
    expect(none.AlarmActions).toBeUndefined();
    s.appTemplate.resourceCountIs('AWS::SNS::Topic', 0);

    const t = synth({ alarm_email: 'ops@example.com' }).appTemplate;
    const topic = logicalId(t, 'AWS::SNS::Topic', '/AlarmTopic/Resource');
    const key = logicalId(t, 'AWS::KMS::Key', '/ApplicationKey/Resource');
    t.hasResourceProperties('AWS::SNS::Topic', { TopicName: 'connectiontest-lambda-alarms', KmsMasterKeyId: { 'Fn::GetAtt': [key, 'Arn'] } });
    t.hasResourceProperties('AWS::SNS::Subscription', { Protocol: 'email', Endpoint: 'ops@example.com', TopicArn: { Ref: topic } });
    t.hasResourceProperties('AWS::CloudWatch::Alarm', { AlarmActions: [{ Ref: topic }], OKActions: [{ Ref: topic }] });
    // TLS-only publishing, and CloudWatch may use the key for this account's alarms only.
    t.hasResourceProperties('AWS::SNS::TopicPolicy', {
      PolicyDocument: { Statement: Match.arrayWith([Match.objectLike({ Effect: 'Deny', Condition: { Bool: { 'aws:SecureTransport': 'false' } } })]) },
    });
    expect(t.findResources('AWS::KMS::Key')[key].Properties.KeyPolicy.Statement).toContainEqual(
      expect.objectContaining({ Principal: { Service: 'cloudwatch.amazonaws.com' }, Condition: { StringEquals: { 'aws:SourceAccount': '111111111111' } } }),
    );
    // The address is not an output.
    expect(JSON.stringify(t.findOutputs('*'))).not.toContain('ops@example.com');
  });

  test('alarm_topic_arn: the alarm notifies that topic, nothing is created', () => {
    const arn = 'arn:aws:sns:us-east-1:111111111111:alerts';
    const t = synth({ alarm_topic_arn: arn }).appTemplate;
    t.resourceCountIs('AWS::SNS::Topic', 0);
    t.hasResourceProperties('AWS::CloudWatch::Alarm', { AlarmActions: [arn], OKActions: [arn] });
  });

  test('alarm on the function Errors metric', () => {
    const t = s.appTemplate;
    t.resourceCountIs('AWS::CloudWatch::Alarm', 1);
    t.hasResourceProperties('AWS::CloudWatch::Alarm', {
      AlarmName: 'connectiontest-lambda-errors',
      Namespace: 'AWS/Lambda',
      MetricName: 'Errors',
      Dimensions: [{ Name: 'FunctionName', Value: { Ref: logicalId(t, 'AWS::Lambda::Function', '/ConnectionTestFunction/Resource') } }],
      Statistic: 'Sum',
      Period: 300,
      Threshold: 1,
      EvaluationPeriods: 1,
      ComparisonOperator: 'GreaterThanOrEqualToThreshold',
      TreatMissingData: 'notBreaching',
    });
  });

  test('function logs have a retention', () => {
    s.appTemplate.hasResourceProperties('AWS::Logs::LogGroup', {
      LogGroupName: '/aws/lambda/connectiontest-lambda',
      RetentionInDays: 30,
    });
  });

  test('outputs: VPC id and subnet ids joined by commas, with no trailing comma', () => {
    const t = s.appTemplate;
    const outputs = t.findOutputs('*');
    expect(Object.keys(outputs).sort()).toEqual(['ApplicationSubnetIds', 'ApplicationVpcId', 'FunctionName', 'LambdaRoleArn', 'LambdaSecurityGroupId']);
    // DatabaseStack admits PostgreSQL on the proxy endpoints from this group only.
    expect(outputs.LambdaSecurityGroupId.Value).toEqual({ 'Fn::GetAtt': [logicalId(t, 'AWS::EC2::SecurityGroup', '/LambdaSecurityGroup/Resource'), 'GroupId'] });
    const vpc = Object.keys(t.findResources('AWS::EC2::VPC'))[0];
    expect(outputs.ApplicationVpcId.Value).toEqual({ Ref: vpc });
    const subnets = Object.keys(t.findResources('AWS::EC2::Subnet'));
    const refs = { [subnets[0]]: 'subnet-0aaaaaaaaaaaaaaaa', [subnets[1]]: 'subnet-0bbbbbbbbbbbbbbbb' };
    expect(evaluate(outputs.ApplicationSubnetIds.Value, refs)).toBe('subnet-0aaaaaaaaaaaaaaaa,subnet-0bbbbbbbbbbbbbbbb');
  });
});
