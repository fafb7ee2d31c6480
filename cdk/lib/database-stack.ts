/**
 * DatabaseStack (database account): an isolated VPC with Aurora PostgreSQL (IAM auth,
 * encrypted, a writer and a reader, enhanced monitoring), its master secret (customer managed
 * key) rotated by a function that can reach both the cluster and Secrets Manager, the
 * application's own read-only database user created at deploy time, an RDS Proxy with
 * end-to-end IAM authentication (no secret at all), proxy endpoints in the application
 * account's shared subnets, and the role the application's Lambda assumes.
 */
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { CfnOutput, CustomResource, Duration, Fn, RemovalPolicy, Validations } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as rds from 'aws-cdk-lib/aws-rds';
import * as cr from 'aws-cdk-lib/custom-resources';
import { Construct } from 'constructs';
import { ApplicationUserSecret } from './application-user-secret';
import { ConnectionTestStackProps, logsKey, OfflineStack, POSTGRES_PORT, subnetMask } from './base-stack';
import { skipCheckov } from './checkov';
import { lambdaRoleArn, roleSlug, rolePascal } from './config';

/** The provisioning function's code: plain JavaScript on Node's built-ins, no build step. */
export const PROVISIONER_DIR = path.resolve(__dirname, '..', 'lambda', 'provision-db-user');

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
  public readonly proxyRole: iam.Role;
  public readonly proxyEndpoints: rds.CfnDBProxyEndpoint[] = [];
  /** Customer managed key of the master secret and the stack's log groups. */
  public readonly key: kms.Key;
  /** Creates the application's database user (Custom::ApplicationDatabaseUser). */
  public readonly provisioner: lambda.Function;
  public readonly applicationUser: CustomResource;
  /** The application user's password, when it logs in with one (database_user_auth "secret"). */
  public readonly applicationUserSecret?: ApplicationUserSecret;

  constructor(scope: Construct, id: string, props: ConnectionTestStackProps) {
    super(scope, id, props.config.databaseAccountId, props);
    const cfg = props.config;
    const isolated: ec2.SubnetSelection = { subnetType: ec2.SubnetType.PRIVATE_ISOLATED };

    this.key = logsKey(this, 'DatabaseKey', 'connectiontest DatabaseStack: the master secret and the log groups');

    // --- Network: isolated, nothing routes in or out ---------------------------------------
    const flowLogGroup = new logs.LogGroup(this, 'VpcFlowLogs', {
      retention: logs.RetentionDays.ONE_MONTH,
      removalPolicy: RemovalPolicy.DESTROY,
      encryptionKey: this.key,
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
    const provisionerSg = sg('ProvisionerSecurityGroup', 'Database user provisioning function: PostgreSQL to the cluster, HTTPS to Secrets Manager');
    const secretsEndpointSg = sg('SecretsManagerEndpointSecurityGroup', 'Secrets Manager endpoint: HTTPS from the rotation and provisioning functions only');

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
    secretsEndpoint.connections.allowDefaultPortFrom(provisionerSg, 'HTTPS from the database user provisioning function');

    // --- Aurora PostgreSQL --------------------------------------------------------------------
    const instanceType = new ec2.InstanceType(cfg.databaseInstanceType);
    // Enhanced monitoring (OS metrics every 60 s into CloudWatch Logs RDSOSMetrics).
    const monitoringInterval = Duration.seconds(60);
    this.cluster = new rds.DatabaseCluster(this, 'Cluster', {
      engine: rds.DatabaseClusterEngine.auroraPostgres({ version: engineVersion(cfg.databaseEngineVersion) }),
      // The master user is for provisioning and rotation only; the application logs in as
      // its own read-only user (Custom::ApplicationDatabaseUser below).
      credentials: rds.Credentials.fromGeneratedSecret(cfg.databaseMasterUsername, { encryptionKey: this.key }),
      defaultDatabaseName: cfg.databaseName,
      iamAuthentication: true,
      // The storage stays on the AWS managed key, so the final snapshot can be restored
      // after make destroy has scheduled this stack's key for deletion.
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
      monitoringInterval,
    });
    // Adds PostgreSQL from rotationSg to the cluster group (and the matching egress rule).
    this.cluster.addRotationSingleUser({
      automaticallyAfter: Duration.days(30),
      securityGroup: rotationSg,
      endpoint: secretsEndpoint,
      vpcSubnets: isolated,
    });
    const masterSecret = this.cluster.secret!;
    if (cfg.databaseUserAuth === 'secret') {
      this.applicationUserSecret = new ApplicationUserSecret(this, 'ApplicationUserSecret', {
        username: cfg.databaseUsername,
        databaseName: cfg.databaseName,
        cluster: this.cluster,
        rotationDays: cfg.databaseSecretRotationDays,
        // The master secret's rotation group: it already reaches the cluster and Secrets Manager.
        rotationNetwork: { vpc: this.vpc, subnets: isolated, securityGroup: rotationSg },
      });
    }
    const appSecret = this.applicationUserSecret?.secret;

    // --- The application's database user ------------------------------------------------
    // Created on the writer by a function in this VPC that logs in with the master secret:
    // LOGIN, rds_iam (IAM only, no password) or else the password of its own secret,
    // pg_read_all_data, read-only by default; it then reads the user back and fails the
    // deployment if the user can do more. (Not the RDS
    // Data API: it does not serve T instance classes, and it would open an HTTPS path to the
    // database for anyone allowed to read the master secret.)
    const provisionerLogs = new logs.LogGroup(this, 'ProvisionerLogs', {
      retention: logs.RetentionDays.ONE_MONTH,
      removalPolicy: RemovalPolicy.DESTROY,
      encryptionKey: this.key,
    });
    const provisionerRole = new iam.Role(this, 'ProvisionerRole', {
      description: `Database user provisioning function: read the master secret${appSecret ? ' and the application user secret' : ''}, run in the VPC`,
      assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com'),
      managedPolicies: [iam.ManagedPolicy.fromAwsManagedPolicyName('service-role/AWSLambdaVPCAccessExecutionRole')],
    });
    this.provisioner = new lambda.Function(this, 'Provisioner', {
      description: `Creates the application database user (read-only, ${appSecret ? 'password of its secret' : 'IAM auth only'}) with the master secret`,
      runtime: lambda.Runtime.NODEJS_24_X,
      architecture: lambda.Architecture.ARM_64,
      handler: 'index.handler',
      code: lambda.Code.fromAsset(PROVISIONER_DIR),
      role: provisionerRole,
      vpc: this.vpc,
      vpcSubnets: isolated,
      securityGroups: [provisionerSg],
      memorySize: 256,
      // Retries for about two minutes while the first rotation may be changing the password.
      timeout: Duration.minutes(5),
      // Runs once per deployment; one at a time is all it ever needs.
      reservedConcurrentExecutions: 1,
      logGroup: provisionerLogs,
      // The RDS certificate authorities, so the TLS connection to the writer is verified.
      environment: { NODE_EXTRA_CA_CERTS: '/var/runtime/ca-cert.pem' },
    });
    // GetSecretValue/DescribeSecret on the master secret (and the application user's) and
    // kms:Decrypt through Secrets Manager only: nothing else.
    masterSecret.grantRead(this.provisioner);
    appSecret?.grantRead(this.provisioner);
    this.cluster.connections.allowDefaultPortFrom(provisionerSg, 'PostgreSQL from the database user provisioning function');
    skipCheckov(this.provisioner, {
      CKV_AWS_116:
        'Invoked synchronously by the custom resource provider, which reports a failure to CloudFormation and fails the deployment; ' +
        'a dead-letter queue only receives failed asynchronous invocations, so it would stay empty.',
      CKV_AWS_173:
        'The only environment variable is NODE_EXTRA_CA_CERTS, a file path; Lambda encrypts environment variables at rest with an AWS managed key, ' +
        'and the master password is fetched from Secrets Manager at run time, never placed in the environment.',
    });

    const providerLogs = new logs.LogGroup(this, 'ProvisionerProviderLogs', {
      retention: logs.RetentionDays.ONE_MONTH,
      removalPolicy: RemovalPolicy.DESTROY,
      encryptionKey: this.key,
    });
    const provider = new cr.Provider(this, 'ProvisionerProvider', { onEventHandler: this.provisioner, logGroup: providerLogs });
    const code = fs.readdirSync(PROVISIONER_DIR).sort().map((f) => fs.readFileSync(path.join(PROVISIONER_DIR, f)));
    this.applicationUser = new CustomResource(this, 'ApplicationUser', {
      serviceToken: provider.serviceToken,
      resourceType: 'Custom::ApplicationDatabaseUser',
      properties: {
        SecretArn: masterSecret.secretArn,
        Host: this.cluster.clusterEndpoint.hostname,
        Port: String(POSTGRES_PORT),
        DatabaseName: cfg.databaseName,
        Username: cfg.databaseUsername,
        // Present: the user logs in with this secret's password instead of IAM. Single-user
        // rotation logs in as the user and changes its own password, which PostgreSQL refuses
        // in a read-only transaction: with rotation on, its sessions start read-write (its
        // privileges stay read-only).
        ...(appSecret
          ? { PasswordSecretArn: appSecret.secretArn, ReadOnlySessions: String(this.applicationUserSecret?.rotation === undefined) }
          : {}),
        // A new version of the statements runs them again on the next deployment.
        CodeVersion: crypto.createHash('sha256').update(Buffer.concat(code)).digest('hex').slice(0, 16),
      },
    });
    // The writer must be up (and the first rotation started) and the network path open before
    // the function runs, and all of it must still be there when it runs again on deletion.
    this.applicationUser.node.addDependency(this.cluster, clusterSg, provisionerSg, secretsEndpoint, secretsEndpointSg);
    // The first rotation logs in with the secret's password: the user must have it by then.
    this.applicationUserSecret?.rotation?.node.addDependency(this.applicationUser);

    // --- RDS Proxy: end-to-end IAM, or the application user's secret ---------------------
    // IAM mode: DefaultAuthScheme IAM_AUTH: clients authenticate with IAM tokens, and the
    // proxy itself logs in to the database with IAM as the same user. The proxy holds no
    // secret, so it can only log in as users that have rds_iam and that its role may
    // rds-db:connect as: here, the application user alone (never the master user).
    // Secret mode: the proxy knows the application user's secret alone (its role may read
    // that one); clients log in with its password over SCRAM-SHA-256, IAM auth off.
    this.proxyRole = new iam.Role(this, 'ProxyRole', {
      description: appSecret
        ? `RDS Proxy ${PROXY_NAME}: read the password secret of ${cfg.databaseUsername} only`
        : `RDS Proxy ${PROXY_NAME}: log in to the cluster with IAM as ${cfg.databaseUsername} only`,
      assumedBy: new iam.ServicePrincipal('rds.amazonaws.com'),
      inlinePolicies: appSecret ? undefined : {
        ConnectToCluster: new iam.PolicyDocument({
          statements: [
            new iam.PolicyStatement({
              sid: 'ConnectToClusterAsApplicationUser',
              actions: ['rds-db:connect'],
              resources: [
                `arn:${this.partition}:rds-db:${this.region}:${this.account}:dbuser:${this.cluster.clusterResourceIdentifier}/${cfg.databaseUsername}`,
              ],
            }),
          ],
        }),
      },
    });
    this.proxy = new rds.DatabaseProxy(this, 'Proxy', {
      dbProxyName: PROXY_NAME,
      proxyTarget: rds.ProxyTarget.fromCluster(this.cluster),
      ...(appSecret
        ? { secrets: [appSecret], iamAuth: false, clientPasswordAuthType: rds.ClientPasswordAuthType.POSTGRES_SCRAM_SHA_256 }
        : { defaultAuthScheme: rds.DefaultAuthScheme.IAM_AUTH }),
      role: this.proxyRole,
      vpc: this.vpc,
      vpcSubnets: isolated,
      securityGroups: [proxySg],
      requireTLS: true,
    });
    this.cluster.connections.allowDefaultPortFrom(proxySg, 'PostgreSQL from the RDS Proxy');

    // --- The role the application's Lambda assumes -----------------------------------------
    // arn:PARTITION:rds:REGION:ACCOUNT:db-proxy:prx-0123456789abcdef0 -> field 6 is the
    // proxy's resource id ("prx-..."), which is what rds-db:connect ARNs name.
    const proxyResourceId = Fn.select(6, Fn.split(':', this.proxy.dbProxyArn));
    const dbUserArn = `arn:${this.partition}:rds-db:${this.region}:${this.account}:dbuser:${proxyResourceId}/${cfg.databaseUsername}`;
    this.connectRole = new iam.Role(this, 'CrossAccountConnectRole', {
      roleName: cfg.databaseConnectRoleName,
      description: appSecret
        ? `Assumed by ${cfg.lambdaRoleName} in account ${cfg.applicationAccountId} to read the password secret of ${cfg.databaseUsername}`
        : `Assumed by ${cfg.lambdaRoleName} in account ${cfg.applicationAccountId} to sign RDS Proxy IAM auth tokens`,
      assumedBy: new iam.ArnPrincipal(lambdaRoleArn(cfg, this.partition)).withConditions({
        StringEquals: { 'sts:ExternalId': cfg.externalId },
      }),
      maxSessionDuration: Duration.hours(1),
      // Secret mode: no rds-db:connect (the user has no rds_iam, so a token could not log in).
      inlinePolicies: appSecret ? undefined : {
        ConnectThroughProxy: new iam.PolicyDocument({
          statements: [
            new iam.PolicyStatement({ sid: 'ConnectThroughProxy', actions: ['rds-db:connect'], resources: [dbUserArn] }),
          ],
        }),
      },
    });
    this.applicationUserSecret?.grantReadTo(this.connectRole);

    // --- Proxy endpoints in the application account's shared subnets -----------------------
    const applicationVpc = ec2.Vpc.fromVpcAttributes(this, 'SharedApplicationVpc', {
      vpcId: cfg.applicationVpcId,
      vpcCidrBlock: cfg.applicationVpcCidr,
      availabilityZones: this.availabilityZones,
    });
    const endpointSg = new ec2.SecurityGroup(this, 'ProxyEndpointSecurityGroup', {
      vpc: applicationVpc,
      securityGroupName: 'connectiontest-proxy-endpoint-sg',
      // Unchanged since the rule below admitted the whole VPC: a new description would make
      // CloudFormation replace this named group, which fails on a deployed stack.
      description: 'RDS Proxy endpoints in the shared application subnets: PostgreSQL from the application VPC only',
      allowAllOutbound: false,
    });
    // The function's own security group, not the application VPC's CIDR: anything else that
    // ever runs in that VPC (or in its subnets, shared with this account) gets no path to the
    // proxy. This works because the endpoints sit in the same VPC as the function (a VPC
    // shared through RAM: a participant's rule may name a group of the VPC owner, given with
    // its account id), and make deploy knows the group's id before this stack is deployed
    // (ApplicationStack output LambdaSecurityGroupId, read after phase 1).
    endpointSg.addIngressRule(
      ec2.Peer.securityGroupId(cfg.applicationLambdaSecurityGroupId, cfg.applicationAccountId),
      ec2.Port.tcp(POSTGRES_PORT),
      'PostgreSQL from connectiontest-lambda (its security group, in the application account)',
    );

    cfg.targetRoles.forEach((role) => {
      const endpoint = new rds.CfnDBProxyEndpoint(this, `${rolePascal(role)}ProxyEndpoint`, {
        dbProxyEndpointName: `connectiontest-${roleSlug(role)}`,
        dbProxyName: this.proxy.dbProxyName,
        vpcSubnetIds: cfg.applicationVpcSubnets,
        vpcSecurityGroupIds: [endpointSg.securityGroupId],
        targetRole: role,
      });
      // A READ_ONLY endpoint needs a reader registered behind the proxy: wait for all of the
      // proxy (its target group among it, which waits for the writer and the reader).
      endpoint.node.addDependency(this.proxy);
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
    new CfnOutput(this, 'ApplicationDatabaseUser', {
      value: this.applicationUser.getAttString('Username'),
      description: `The read-only, ${appSecret ? 'password' : 'IAM-only'} database user the Lambda logs in as (DB_USERNAME)`,
    });
    if (appSecret) {
      new CfnOutput(this, 'ApplicationUserSecretArn', {
        value: appSecret.secretArn,
        description: "The application user's password secret, read with CrossAccountRoleArn (context application_db_secret_arn, DB_SECRET_ARN)",
      });
    }

    // --- cdk-nag: findings that are deliberate ----------------------------------------------
    Validations.of(provisionerRole).acknowledge({
      id: 'AwsSolutions::AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole]',
      reason:
        'AWSLambdaVPCAccessExecutionRole is the AWS-maintained minimum for a function in a VPC: CloudWatch Logs writes plus the ec2 ' +
        'network-interface calls Lambda makes to attach the function to its subnets, which EC2 only authorizes on Resource "*". ' +
        'Beyond it the provisioning role may only read the master secret and, with a password user, that user\'s secret (and decrypt them ' +
        'through Secrets Manager).',
    });
    Validations.of(this.cluster).acknowledge({
      id: 'AwsSolutions::AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole]',
      reason:
        'The role RDS enhanced monitoring assumes (trusted by monitoring.rds.amazonaws.com only) to write OS metrics; its AWS-maintained ' +
        'policy is limited to the RDSOSMetrics log group and its streams, which is exactly what the service writes.',
    });
    Validations.of(provider).acknowledge(
      {
        id: 'AwsSolutions::AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]',
        reason:
          'The CDK custom resource provider function relays CloudFormation events to the provisioning function; AWSLambdaBasicExecutionRole ' +
          'is the AWS-maintained CloudWatch Logs write permission every function needs, and it grants nothing on data.',
      },
      {
        id: 'AwsSolutions::AwsSolutions-IAM5[Resource::<Provisioner21C549B7.Arn>:*]',
        reason:
          'The provider may invoke the provisioning function and its versions (ARN:*), the form lambda:InvokeFunction takes for one ' +
          'function; the wildcard is the version qualifier of that single function, not a set of functions.',
      },
    );
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
