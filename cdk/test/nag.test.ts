/**
 * cdk-nag AwsSolutions on both stacks: no unacknowledged finding of any severity, every
 * acknowledgment carries a specific reason, and the check is live (a planted violation fails).
 */
import { App, Validations } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import { IConstruct } from 'constructs';
import { buildApp } from '../lib/app';
import { context, TEST_ENV, validationFindings } from './helpers';

function freshApp(overrides: Record<string, unknown> = {}) {
  const built = buildApp(new App({ context: context(overrides) }), TEST_ENV);
  Validations.of(built.app).acknowledge({ id: 'connectiontest:stand-in-asset', reason: 'tests use the stand-in asset' });
  return { ...built, outdir: built.app.outdir };
}

interface Ack {
  id: string;
  reason: string;
  path: string;
}

function acknowledgments(root: IConstruct): Ack[] {
  const out: Ack[] = [];
  for (const c of root.node.findAll()) {
    for (const m of c.node.metadata) {
      if (m.type === Validations.ACKNOWLEDGED_RULES_METADATA_KEY) {
        for (const [id, reason] of Object.entries(m.data as Record<string, string>)) out.push({ id, reason, path: c.node.path });
      }
    }
  }
  return out;
}

describe('cdk-nag AwsSolutions', () => {
  test.each([
    ['default context', {}],
    ['both target roles and optional Lambda settings', { target_roles: 'READ_ONLY,READ_WRITE', db_connect_host: '10.0.16.10' }],
    ['an alarm e-mail (a new encrypted topic)', { alarm_email: 'ops@example.com' }],
    ['an existing alarm topic', { alarm_topic_arn: 'arn:aws:sns:us-east-1:111111111111:alerts' }],
    ['a password user (secret mode, rotated)', { database_user_auth: 'secret' }],
    ['a password user without rotation', { database_user_auth: 'secret', database_secret_rotation_days: 0 }],
    ['settings in Parameter Store', { lambda_settings_from: 'parameters' }],
    [
      'secret mode with its ARN known and settings in Parameter Store',
      {
        database_user_auth: 'secret',
        application_db_secret_arn: 'arn:aws:secretsmanager:us-east-1:222222222222:secret:ApplicationUserSecretA6CF3A7A-AbCdEf',
        lambda_settings_from: 'parameters',
        lambda_settings_parameter_path: '/team-a/connectiontest',
      },
    ],
  ])('no unacknowledged finding on either stack (%s)', (_name, overrides) => {
    const { app, outdir } = freshApp(overrides);
    const findings = validationFindings(app, outdir).filter((f) => f.plugin === 'AwsSolutions');
    expect(findings).toEqual([]);
  });

  test('no warning of any other validation plugin either', () => {
    const { app, outdir } = freshApp();
    expect(validationFindings(app, outdir)).toEqual([]);
  });

  test('the check is live: a planted violation is reported as an error', () => {
    const { app, application, outdir } = freshApp();
    const sg = new ec2.SecurityGroup(application, 'PlantedOpenGroup', { vpc: application.vpc });
    sg.addIngressRule(ec2.Peer.anyIpv4(), ec2.Port.tcp(22));
    const findings = validationFindings(app, outdir);
    expect(findings).toContainEqual({
      plugin: 'AwsSolutions',
      rule: 'AwsSolutions-EC23',
      severity: 'error',
      paths: ['ApplicationStack/PlantedOpenGroup/Resource'],
    });
  });

  test('exactly the expected acknowledgments, each with a specific reason', () => {
    const { app } = freshApp();
    // Only ours: aws-cdk-lib itself acknowledges two CloudFormation-Validate schema quirks of FlowLog.
    const acks = acknowledgments(app).filter((a) => !a.id.startsWith('CloudFormation-Validate::') && !a.id.includes('stand-in'));
    expect(acks.map((a) => `${a.path} ${a.id}`).sort()).toEqual([
      'ApplicationStack/LambdaRole AwsSolutions::AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole]',
      'DatabaseStack/Cluster AwsSolutions::AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole]',
      'DatabaseStack/Cluster AwsSolutions::AwsSolutions-RDS10',
      'DatabaseStack/Cluster AwsSolutions::AwsSolutions-RDS11',
      'DatabaseStack/ProvisionerProvider AwsSolutions::AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]',
      'DatabaseStack/ProvisionerProvider AwsSolutions::AwsSolutions-IAM5[Resource::<Provisioner21C549B7.Arn>:*]',
      'DatabaseStack/ProvisionerRole AwsSolutions::AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole]',
    ]);
    for (const a of acks) {
      expect(a.reason.length).toBeGreaterThan(120);
      expect(a.reason).not.toMatch(/out of scope|not in scope|cannot control/i);
    }
  });

  test('the modes add exactly their own acknowledgments: the settings path wildcard, and a secret without rotation', () => {
    const ours = (overrides: Record<string, unknown>) =>
      acknowledgments(freshApp(overrides).app).filter((a) => !a.id.startsWith('CloudFormation-Validate::') && !a.id.includes('stand-in'));
    const base = new Set(ours({}).map((a) => `${a.path} ${a.id}`));
    const added = ours({ database_user_auth: 'secret', database_secret_rotation_days: 0, lambda_settings_from: 'parameters' }).filter(
      (a) => !base.has(`${a.path} ${a.id}`),
    );
    expect(added.map((a) => `${a.path} ${a.id}`).sort()).toEqual([
      'ApplicationStack/LambdaRole AwsSolutions::AwsSolutions-IAM5[Resource::arn:aws:ssm:us-east-1:111111111111:parameter/connectiontest/db/*]',
      'DatabaseStack/ApplicationUserSecret/Secret AwsSolutions::AwsSolutions-SMG4',
    ]);
    for (const a of added) expect(a.reason.length).toBeGreaterThan(120);
    // Rotated: no acknowledgment on the secret at all.
    expect(ours({ database_user_auth: 'secret' }).some((a) => a.path.includes('ApplicationUserSecret'))).toBe(false);
  });
});
