import { Duration, Fn, RemovalPolicy, Stack, StackProps } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as kms from 'aws-cdk-lib/aws-kms';
import { Construct } from 'constructs';
import { AppConfig } from './config';

export interface ConnectionTestStackProps extends StackProps {
  readonly config: AppConfig;
}

/** PostgreSQL port: the Lambda contract (DB_PORT), the proxy endpoints and the cluster. */
export const POSTGRES_PORT = 5432;

/**
 * A stack bound to a concrete account and region (so `cdk deploy` with the wrong profile
 * fails before touching anything) that still synthesizes offline: availability zones are
 * the first two of `Fn::GetAZs` at deploy time instead of a lookup at synth time.
 */
export abstract class OfflineStack extends Stack {
  get availabilityZones(): string[] {
    return [Fn.select(0, Fn.getAzs()), Fn.select(1, Fn.getAzs())];
  }

  protected constructor(scope: Construct, id: string, account: string, props: ConnectionTestStackProps) {
    super(scope, id, { ...props, env: { account, region: props.config.region } });
  }
}

/** Subnet mask for two subnets per VPC with room to grow: the VPC prefix + 2 (a /24 gives /26s). */
export function subnetMask(vpcCidr: string): number {
  return Math.min(Number(vpcCidr.split('/')[1]) + 2, 28);
}

/**
 * A customer managed key (rotated yearly) that CloudWatch Logs may use for this stack's log
 * groups, and only for log groups of this account and region (encryption context condition).
 * Deleting the stack schedules the key's deletion after 7 days.
 */
export function logsKey(stack: Stack, id: string, description: string): kms.Key {
  const key = new kms.Key(stack, id, {
    description,
    enableKeyRotation: true,
    removalPolicy: RemovalPolicy.DESTROY,
    pendingWindow: Duration.days(7),
  });
  key.addToResourcePolicy(
    new iam.PolicyStatement({
      sid: 'CloudWatchLogsOfThisAccount',
      principals: [new iam.ServicePrincipal(`logs.${stack.region}.amazonaws.com`)],
      actions: ['kms:Encrypt*', 'kms:Decrypt*', 'kms:ReEncrypt*', 'kms:GenerateDataKey*', 'kms:Describe*'],
      resources: ['*'],
      conditions: {
        ArnLike: { 'kms:EncryptionContext:aws:logs:arn': `arn:${stack.partition}:logs:${stack.region}:${stack.account}:log-group:*` },
      },
    }),
  );
  return key;
}
