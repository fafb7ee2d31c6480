/**
 * ApplicationStack (application account): a VPC with isolated subnets shared to the database
 * account through AWS RAM, an STS interface endpoint instead of NAT gateways, and the
 * connection-test Lambda with the narrowest role and security group that let it do its job:
 * assume one role in the database account, then connect to the proxy endpoint on 5432.
 */
import { Annotations, CfnOutput, Duration, Fn, RemovalPolicy, Validations } from 'aws-cdk-lib';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as cloudwatchActions from 'aws-cdk-lib/aws-cloudwatch-actions';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as ram from 'aws-cdk-lib/aws-ram';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as subscriptions from 'aws-cdk-lib/aws-sns-subscriptions';
import { Construct } from 'constructs';
import { ConnectionTestStackProps, logsKey, OfflineStack, POSTGRES_PORT, subnetMask } from './base-stack';
import { skipCheckov } from './checkov';
import { databaseConnectRoleArn } from './config';
import { chooseLambdaCode } from './lambda-code';

export class ApplicationStack extends OfflineStack {
  public readonly vpc: ec2.Vpc;
  public readonly function: lambda.Function;
  public readonly role: iam.Role;
  public readonly lambdaSecurityGroup: ec2.SecurityGroup;
  public readonly errorsAlarm: cloudwatch.Alarm;
  /** Where the errors alarm notifies, if alarm_email or alarm_topic_arn is set. */
  public readonly alarmTopic?: sns.ITopic;
  /** Customer managed key of the log groups (and of the alarm topic this stack creates). */
  public readonly key: kms.Key;
  /** True when the function's code is the stand-in (no `make build` yet). */
  public readonly usesStandInAsset: boolean;
  /** Absolute path of what was packaged as the function's code. */
  public readonly lambdaAssetPath: string;

  constructor(scope: Construct, id: string, props: ConnectionTestStackProps) {
    super(scope, id, props.config.applicationAccountId, props);
    const cfg = props.config;
    const dbRoleArn = databaseConnectRoleArn(cfg, this.partition);
    const functionName = cfg.functionName;
    this.key = logsKey(this, 'ApplicationKey', 'connectiontest ApplicationStack: log groups and the alarm topic');

    // --- Network: isolated subnets only (no NAT, no internet gateway) -------------------
    const flowLogGroup = new logs.LogGroup(this, 'VpcFlowLogs', {
      retention: logs.RetentionDays.ONE_MONTH,
      removalPolicy: RemovalPolicy.DESTROY,
      encryptionKey: this.key,
    });
    this.vpc = new ec2.Vpc(this, 'ApplicationVpc', {
      vpcName: 'connectiontest-application-vpc',
      ipAddresses: ec2.IpAddresses.cidr(cfg.applicationVpcCidr),
      maxAzs: 2,
      natGateways: 0,
      subnetConfiguration: [
        { name: 'application', subnetType: ec2.SubnetType.PRIVATE_ISOLATED, cidrMask: subnetMask(cfg.applicationVpcCidr) },
      ],
      restrictDefaultSecurityGroup: true,
      flowLogs: {
        all: { destination: ec2.FlowLogDestination.toCloudWatchLogs(flowLogGroup), trafficType: ec2.FlowLogTrafficType.ALL },
      },
    });
    const subnets = this.vpc.isolatedSubnets;

    // The database account creates its RDS Proxy endpoints in these subnets.
    new ram.CfnResourceShare(this, 'SubnetShare', {
      name: 'connectiontest-application-subnets',
      allowExternalPrincipals: false,
      principals: [cfg.databaseAccountId],
      resourceArns: subnets.map((s) => this.formatArn({ service: 'ec2', resource: 'subnet', resourceName: s.subnetId })),
    });

    // --- Security groups -------------------------------------------------------------------
    this.lambdaSecurityGroup = new ec2.SecurityGroup(this, 'LambdaSecurityGroup', {
      vpc: this.vpc,
      securityGroupName: 'connectiontest-lambda-sg',
      description: 'connectiontest-lambda: egress to the RDS Proxy endpoint (5432) and the STS endpoint (443) only',
      allowAllOutbound: false,
    });
    // The proxy endpoints' network interfaces live in the shared subnets (created by the
    // database account, so their security group cannot be referenced from here): allow
    // PostgreSQL to exactly those subnet ranges.
    subnets.forEach((s, i) =>
      this.lambdaSecurityGroup.addEgressRule(
        ec2.Peer.ipv4(s.ipv4CidrBlock),
        ec2.Port.tcp(POSTGRES_PORT),
        `PostgreSQL to the RDS Proxy endpoints in shared subnet ${i + 1}`,
      ),
    );

    const stsEndpointSecurityGroup = new ec2.SecurityGroup(this, 'StsEndpointSecurityGroup', {
      vpc: this.vpc,
      securityGroupName: 'connectiontest-sts-endpoint-sg',
      description: 'STS interface endpoint: HTTPS from connectiontest-lambda only',
      allowAllOutbound: false,
    });
    const stsEndpoint = this.vpc.addInterfaceEndpoint('StsEndpoint', {
      service: ec2.InterfaceVpcEndpointAwsService.STS,
      privateDnsEnabled: true,
      subnets: { subnets },
      securityGroups: [stsEndpointSecurityGroup],
      open: false,
    });
    // Adds the ingress rule on the endpoint's group and the egress rule on the Lambda's.
    stsEndpoint.connections.allowDefaultPortFrom(this.lambdaSecurityGroup, 'HTTPS from connectiontest-lambda to STS (AssumeRole)');

    // --- IAM -------------------------------------------------------------------------------
    this.role = new iam.Role(this, 'LambdaRole', {
      roleName: cfg.lambdaRoleName,
      description: 'connectiontest-lambda: assume the database account role, run in the VPC',
      assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com'),
      managedPolicies: [iam.ManagedPolicy.fromAwsManagedPolicyName('service-role/AWSLambdaVPCAccessExecutionRole')],
      inlinePolicies: {
        AssumeDatabaseAccountRole: new iam.PolicyDocument({
          statements: [
            new iam.PolicyStatement({
              sid: 'AssumeDatabaseAccountRole',
              actions: ['sts:AssumeRole'],
              resources: [dbRoleArn],
            }),
          ],
        }),
      },
    });
    Validations.of(this.role).acknowledge({
      id: 'AwsSolutions::AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole]',
      reason:
        'AWSLambdaVPCAccessExecutionRole is the AWS-maintained minimum for a function in a VPC: CloudWatch Logs ' +
        'writes plus the ec2 network-interface calls Lambda makes to attach the function to its subnets, which ' +
        'EC2 only authorizes on Resource "*". A hand-written copy would be the same wildcard without AWS updates. ' +
        'The only permission this stack adds is sts:AssumeRole on the one database-account role ARN.',
    });

    // --- The function ----------------------------------------------------------------------
    const code = chooseLambdaCode(this, cfg);
    this.usesStandInAsset = code.standIn;
    this.lambdaAssetPath = code.assetPath;
    const functionLogs = new logs.LogGroup(this, 'FunctionLogs', {
      logGroupName: `/aws/lambda/${functionName}`,
      retention: logs.RetentionDays.ONE_MONTH,
      removalPolicy: RemovalPolicy.DESTROY,
      encryptionKey: this.key,
    });
    const environment: Record<string, string> = {
      DATABASE_ACCOUNT_IAM_ROLE: dbRoleArn,
      RDS_PROXY_APPLICATION_ENDPOINT: cfg.applicationRdsProxyEndpoint,
      DB_USERNAME: cfg.databaseUsername,
      DBNAME: cfg.databaseName,
      DB_PORT: String(POSTGRES_PORT),
      EXTERNAL_ID: cfg.externalId,
    };
    if (cfg.dbCaBundle) environment.DB_CA_BUNDLE = cfg.dbCaBundle;
    if (cfg.dbConnectHost) environment.DB_CONNECT_HOST = cfg.dbConnectHost;

    this.function = new lambda.Function(this, 'ConnectionTestFunction', {
      functionName,
      description: 'Proves the cross-account path: AssumeRole, IAM token, TLS to the RDS Proxy endpoint, a read',
      runtime: lambda.Runtime.PROVIDED_AL2023,
      architecture: lambda.Architecture.ARM_64,
      handler: 'bootstrap',
      code: code.code,
      role: this.role,
      vpc: this.vpc,
      vpcSubnets: { subnets },
      securityGroups: [this.lambdaSecurityGroup],
      memorySize: 256,
      timeout: Duration.seconds(30),
      // Each invocation holds one client connection on the proxy (and signs one IAM login):
      // this caps them, so a runaway caller cannot crowd out the proxy or its IAM auth rate.
      reservedConcurrentExecutions: cfg.lambdaReservedConcurrency,
      logGroup: functionLogs,
      environment,
    });
    skipCheckov(this.function, {
      CKV_AWS_116:
        'Invoked synchronously (make invoke, or a caller that reads the answer): a failure is returned to the caller as a function error ' +
        'and counted by the Errors alarm; a dead-letter queue only receives failed asynchronous invocations.',
      CKV_AWS_173:
        'The environment holds ARNs, a host name, database and user names and the external ID, none of them a credential (the external ID ' +
        'only works together with this role\'s own credentials); Lambda encrypts it at rest with an AWS managed key, and a customer managed ' +
        'key would add a kms:Decrypt call to every cold start.',
    });
    if (!cfg.applicationRdsProxyEndpoint) {
      Annotations.of(this.function).addInfo(
        'application_rds_proxy_endpoint is empty, so RDS_PROXY_APPLICATION_ENDPOINT is too: expected before ' +
          'DatabaseStack exists; make deploy sets it in its third phase',
      );
    }

    // Failures are Lambda function errors, so the Errors metric sees every one.
    this.errorsAlarm = new cloudwatch.Alarm(this, 'ConnectionTestErrors', {
      alarmName: `${functionName}-errors`,
      alarmDescription: `${functionName} reported a function error: the cross-account database path is broken (see the function logs for the stage and hint)`,
      metric: this.function.metricErrors({ period: Duration.minutes(5), statistic: cloudwatch.Stats.SUM }),
      threshold: 1,
      evaluationPeriods: 1,
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
      treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
    });
    if (cfg.alarmEmail) {
      const topic = new sns.Topic(this, 'AlarmTopic', {
        topicName: `${functionName}-alarms`,
        displayName: `${functionName} alarms`,
        masterKey: this.key,
        enforceSSL: true,
      });
      // CloudWatch publishes to the encrypted topic: it needs the key, for this account's alarms only.
      this.key.addToResourcePolicy(
        new iam.PolicyStatement({
          sid: 'CloudWatchAlarmsOfThisAccount',
          principals: [new iam.ServicePrincipal('cloudwatch.amazonaws.com')],
          actions: ['kms:Decrypt', 'kms:GenerateDataKey*'],
          resources: ['*'],
          conditions: { StringEquals: { 'aws:SourceAccount': this.account } },
        }),
      );
      topic.addSubscription(new subscriptions.EmailSubscription(cfg.alarmEmail));
      this.alarmTopic = topic;
    } else if (cfg.alarmTopicArn) {
      this.alarmTopic = sns.Topic.fromTopicArn(this, 'AlarmTopic', cfg.alarmTopicArn);
    }
    if (this.alarmTopic) {
      const action = new cloudwatchActions.SnsAction(this.alarmTopic);
      this.errorsAlarm.addAlarmAction(action);
      this.errorsAlarm.addOkAction(action);
    } else {
      Annotations.of(this.errorsAlarm).addInfo(
        'the errors alarm has no action: set context alarm_email (a new topic) or alarm_topic_arn (yours) to be notified',
      );
    }

    // --- Outputs read by `make deploy` (phase 2) --------------------------------------------
    new CfnOutput(this, 'ApplicationVpcId', { value: this.vpc.vpcId, description: 'VPC id (context application_vpc_id)' });
    new CfnOutput(this, 'ApplicationSubnetIds', {
      value: Fn.join(',', subnets.map((s) => s.subnetId)),
      description: 'Shared subnet ids, comma-separated (context application_vpc_subnets)',
    });
    new CfnOutput(this, 'LambdaRoleArn', { value: this.role.roleArn, description: 'The only principal the database role trusts' });
    new CfnOutput(this, 'LambdaSecurityGroupId', {
      value: this.lambdaSecurityGroup.securityGroupId,
      description: "The function's security group: the only source the proxy endpoints admit (context application_lambda_security_group_id)",
    });
    new CfnOutput(this, 'FunctionName', { value: this.function.functionName });
  }
}
