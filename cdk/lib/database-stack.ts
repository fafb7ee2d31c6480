/**
 * DatabaseStack (database account): an isolated VPC with Aurora PostgreSQL (IAM auth,
 * encrypted, a writer and a reader), its secret rotated by a function that can reach both the
 * cluster and Secrets Manager, an RDS Proxy that requires IAM auth and TLS, proxy endpoints in
 * the application account's shared subnets, and the role the application's Lambda assumes.
 */
import { CfnOutput, Duration, Fn, RemovalPolicy, Validations } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as rds from 'aws-cdk-lib/aws-rds';
import { Construct } from 'constructs';
import { ConnectionTestStackProps, OfflineStack, POSTGRES_PORT, subnetMask } from './base-stack';
import { lambdaRoleArn, roleSlug, rolePascal } from './config';

/** Aurora PostgreSQL engine version from context ("17.9" by default: see config.ts). */
export function engineVersion(version: string): rds.AuroraPostgresEngineVersion {
  return rds.AuroraPostgresEngineVersion.of(version, version.split('.')[0]);
}

export const PROXY_NAME = 'connectiontest-proxy';

export class DatabaseStack extends OfflineStack {
  public readonly vpc: ec2.Vpc;
  public readonly cluster: rds.DatabaseCluster;
  public readonly proxy: rds.DatabaseProxy;
  public readonly connectRole: iam.Role;
  public readonly proxyEndpoints: rds.CfnDBProxyEndpoint[] = [];

  constructor(scope: Construct, id: string, props: ConnectionTestStackProps) {
    super(scope, id, props.config.databaseAccountId, props);
    const cfg = props.config;
    const isolated: ec2.SubnetSelection = { subnetType: ec2.SubnetType.PRIVATE_ISOLATED };

    // --- Network: isolated, nothing routes in or out ---------------------------------------
    const flowLogGroup = new logs.LogGroup(this, 'VpcFlowLogs', {
      retention: logs.RetentionDays.ONE_MONTH,
      removalPolicy: RemovalPolicy.DESTROY,
    });
    this.vpc = new ec2.Vpc(this, 'DatabaseVpc', {
      vpcName: 'connectiontest-database-vpc',
      ipAddresses: ec2.IpAddresses.cidr(cfg.databaseVpcCidr),
      maxAzs: 2,
      natGateways: 0,
      subnetConfiguration: [
        { name: 'database', subnetType: ec2.SubnetType.PRIVATE_ISOLATED, cidrMask: subnetMask(cfg.databaseVpcCidr) },
      ],
      restrictDefaultSecurityGroup: true,
      flowLogs: {
        all: { destination: ec2.FlowLogDestination.toCloudWatchLogs(flowLogGroup), trafficType: ec2.FlowLogTrafficType.ALL },
      },
    });

    const sg = (name: string, description: string) =>
      new ec2.SecurityGroup(this, name, { vpc: this.vpc, description, allowAllOutbound: false });
    const clusterSg = sg('ClusterSecurityGroup', 'Aurora cluster: PostgreSQL from the RDS Proxy and the rotation function only');
    const proxySg = sg('ProxySecurityGroup', 'RDS Proxy: PostgreSQL out to the Aurora cluster only');
    const rotationSg = sg('RotationSecurityGroup', 'Secret rotation function: PostgreSQL to the cluster, HTTPS to Secrets Manager');
    const secretsEndpointSg = sg('SecretsManagerEndpointSecurityGroup', 'Secrets Manager endpoint: HTTPS from the rotation function only');

    // The rotation function runs in the isolated subnets; this endpoint is how it reaches
    // Secrets Manager (the reference sample's rotation could reach neither this nor the DB).
    const secretsEndpoint = this.vpc.addInterfaceEndpoint('SecretsManagerEndpoint', {
      service: ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER,
      privateDnsEnabled: true,
      subnets: isolated,
      securityGroups: [secretsEndpointSg],
      open: false,
    });
    secretsEndpoint.connections.allowDefaultPortFrom(rotationSg, 'HTTPS from the secret rotation function');

    // --- Aurora PostgreSQL --------------------------------------------------------------------
    const instanceType = new ec2.InstanceType(cfg.databaseInstanceType);
    this.cluster = new rds.DatabaseCluster(this, 'Cluster', {
      engine: rds.DatabaseClusterEngine.auroraPostgres({ version: engineVersion(cfg.databaseEngineVersion) }),
      // The configured database user is the one the proxy holds a secret for and the one
      // the cross-account role may connect as (not a hard-coded "postgres").
      credentials: rds.Credentials.fromGeneratedSecret(cfg.databaseUsername),
      defaultDatabaseName: cfg.databaseName,
      iamAuthentication: true,
      storageEncrypted: true,
      port: POSTGRES_PORT,
      writer: rds.ClusterInstance.provisioned('Writer', { instanceType, publiclyAccessible: false }),
      // A reader, so the READ_ONLY proxy endpoint has a target.
      readers: [rds.ClusterInstance.provisioned('Reader', { instanceType, publiclyAccessible: false, promotionTier: 1 })],
      vpc: this.vpc,
      vpcSubnets: isolated,
      securityGroups: [clusterSg],
      backup: { retention: Duration.days(7) },
      deletionProtection: false,
      removalPolicy: RemovalPolicy.SNAPSHOT,
    });
    // Adds PostgreSQL from rotationSg to the cluster group (and the matching egress rule).
    this.cluster.addRotationSingleUser({
      automaticallyAfter: Duration.days(30),
      securityGroup: rotationSg,
      endpoint: secretsEndpoint,
      vpcSubnets: isolated,
    });

    // --- RDS Proxy ----------------------------------------------------------------------------
    this.proxy = new rds.DatabaseProxy(this, 'Proxy', {
      dbProxyName: PROXY_NAME,
      proxyTarget: rds.ProxyTarget.fromCluster(this.cluster),
      secrets: [this.cluster.secret!],
      vpc: this.vpc,
      vpcSubnets: isolated,
      securityGroups: [proxySg],
      iamAuth: true,
      requireTLS: true,
    });
    this.cluster.connections.allowDefaultPortFrom(proxySg, 'PostgreSQL from the RDS Proxy');
    const proxyTargetGroup = this.proxy.node.findChild('ProxyTargetGroup') as rds.CfnDBProxyTargetGroup;

    // --- The role the application's Lambda assumes -----------------------------------------
    // arn:PARTITION:rds:REGION:ACCOUNT:db-proxy:prx-0123456789abcdef0 -> field 6 is the
    // proxy's resource id ("prx-..."), which is what rds-db:connect ARNs name.
    const proxyResourceId = Fn.select(6, Fn.split(':', this.proxy.dbProxyArn));
    const dbUserArn = `arn:${this.partition}:rds-db:${this.region}:${this.account}:dbuser:${proxyResourceId}/${cfg.databaseUsername}`;
    this.connectRole = new iam.Role(this, 'CrossAccountConnectRole', {
      roleName: cfg.databaseConnectRoleName,
      description: `Assumed by ${cfg.lambdaRoleName} in account ${cfg.applicationAccountId} to sign RDS Proxy IAM auth tokens`,
      assumedBy: new iam.ArnPrincipal(lambdaRoleArn(cfg, this.partition)).withConditions({
        StringEquals: { 'sts:ExternalId': cfg.externalId },
      }),
      maxSessionDuration: Duration.hours(1),
      inlinePolicies: {
        ConnectThroughProxy: new iam.PolicyDocument({
          statements: [
            new iam.PolicyStatement({ sid: 'ConnectThroughProxy', actions: ['rds-db:connect'], resources: [dbUserArn] }),
          ],
        }),
      },
    });

    // --- Proxy endpoints in the application account's shared subnets -----------------------
    const applicationVpc = ec2.Vpc.fromVpcAttributes(this, 'SharedApplicationVpc', {
      vpcId: cfg.applicationVpcId,
      vpcCidrBlock: cfg.applicationVpcCidr,
      availabilityZones: this.availabilityZones,
    });
    const endpointSg = new ec2.SecurityGroup(this, 'ProxyEndpointSecurityGroup', {
      vpc: applicationVpc,
      securityGroupName: 'connectiontest-proxy-endpoint-sg',
      description: 'RDS Proxy endpoints in the shared application subnets: PostgreSQL from the application VPC only',
      allowAllOutbound: false,
    });
    endpointSg.addIngressRule(ec2.Peer.ipv4(cfg.applicationVpcCidr), ec2.Port.tcp(POSTGRES_PORT), 'PostgreSQL from the application VPC');

    cfg.targetRoles.forEach((role) => {
      const endpoint = new rds.CfnDBProxyEndpoint(this, `${rolePascal(role)}ProxyEndpoint`, {
        dbProxyEndpointName: `connectiontest-${roleSlug(role)}`,
        dbProxyName: this.proxy.dbProxyName,
        vpcSubnetIds: cfg.applicationVpcSubnets,
        vpcSecurityGroupIds: [endpointSg.securityGroupId],
        targetRole: role,
      });
      // A READ_ONLY endpoint needs a reader registered behind the proxy: wait for the target
      // group, which itself waits for the writer and the reader instances.
      endpoint.node.addDependency(proxyTargetGroup);
      this.proxyEndpoints.push(endpoint);
      new CfnOutput(this, `ProxyEndpoint${rolePascal(role)}`, {
        value: endpoint.attrEndpoint,
        description: `RDS Proxy endpoint (${role}) in the application VPC`,
      });
    });

    new CfnOutput(this, 'ApplicationProxyEndpoint', {
      value: this.proxyEndpoints[0].attrEndpoint,
      description: `Endpoint the Lambda uses (${cfg.targetRoles[0]}, first of target_roles); make deploy passes it as application_rds_proxy_endpoint`,
    });
    new CfnOutput(this, 'CrossAccountRoleArn', { value: this.connectRole.roleArn });
    new CfnOutput(this, 'ProxyResourceId', { value: proxyResourceId });

    // --- cdk-nag: findings that are deliberate ----------------------------------------------
    Validations.of(this.cluster).acknowledge(
      {
        id: 'AwsSolutions::AwsSolutions-RDS10',
        reason:
          'This cluster exists to prove the cross-account connection path and is torn down with make destroy; ' +
          'deletion protection would make that fail. RemovalPolicy.SNAPSHOT still takes a final snapshot on delete.',
      },
      {
        id: 'AwsSolutions::AwsSolutions-RDS11',
        reason:
          'Port 5432 is part of the contract (DB_PORT, and RDS Proxy PostgreSQL endpoints always listen on 5432). ' +
          'The cluster is in isolated subnets and its security group admits only the proxy and the rotation function, ' +
          'so a non-default port would add no protection.',
      },
    );
  }
}
