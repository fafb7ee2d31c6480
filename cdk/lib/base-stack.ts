import { Fn, Stack, StackProps } from 'aws-cdk-lib';
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
