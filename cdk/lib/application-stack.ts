/**
 * ApplicationStack (application account): a VPC with isolated subnets shared to the database
 * account through AWS RAM, an STS interface endpoint instead of NAT gateways, and the
 * connection-test Lambda with the narrowest role and security group that let it do its job:
 * assume one role in the database account, then connect to the proxy endpoint on 5432.
 * Optionally (context) the function reads the database user's password secret in the
 * database account, and its settings from Parameter Store instead of its environment.
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
import * as ssm from 'aws-cdk-lib/aws-ssm';
import * as subscriptions from 'aws-cdk-lib/aws-sns-subscriptions';
import { Construct } from 'constructs';
import { ConnectionTestStackProps, logsKey, OfflineStack, POSTGRES_PORT, subnetMask } from './base-stack';
import { skipCheckov } from './checkov';
import { AppConfig, databaseConnectRoleArn } from './config';
import { chooseLambdaCode } from './lambda-code';

/**
 * One setting of connectiontest-lambda: its environment variable, and the name of its
 * parameter under lambda_settings_parameter_path (what the function reads at init when
 * CONFIG_PARAMETER_PATH is set; the environment overrides it).
 */
export interface FunctionSetting {
  readonly env: string;
  readonly parameter: string;
  readonly value: string;
}

/** The function's settings, in the order of its environment. Empty optional ones are left out. */
export function functionSettings(cfg: AppConfig, dbRoleArn: string): FunctionSetting[] {
  const optional = (env: string, parameter: string, value: string) => (value ? [{ env, parameter, value }] : []);
  return [
    { env: 'DATABASE_ACCOUNT_IAM_ROLE', parameter: 'assume_role', value: dbRoleArn },
    // Empty before DatabaseStack exists; kept in the environment so the function names it.
    { env: 'RDS_PROXY_APPLICATION_ENDPOINT', parameter: 'hostname', value: cfg.applicationRdsProxyEndpoint },
    { env: 'DB_USERNAME', parameter: 'user', value: cfg.databaseUsername },
    { env: 'DBNAME', parameter: 'database', value: cfg.databaseName },
    { env: 'DB_PORT', parameter: 'port', value: String(POSTGRES_PORT) },
    { env: 'EXTERNAL_ID', parameter: 'external_id', value: cfg.externalId },
    ...optional('DB_CA_BUNDLE', 'ca_bundle', cfg.dbCaBundle),
    ...optional('DB_CONNECT_HOST', 'connect_address', cfg.dbConnectHost),
    ...(cfg.databaseUserAuth === 'secret' ? optional('DB_SECRET_ARN', 'secret_arn', cfg.applicationDbSecretArn) : []),
  ];
}

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
  /** The function's settings in Parameter Store (lambda_settings_from "parameters"), by parameter name. */
  public readonly settingsParameters: Record<string, ssm.StringParameter> = {};

  constructor(scope: Construct, id: string, props: ConnectionTestStackProps) {
    super(scope, id, props.config.applicationAccountId, props);
    const cfg = props.config;
    const dbRoleArn = databaseConnectRoleArn(cfg, this.partition);
    const functionName = cfg.functionName;
    const settingsFromParameters = cfg.lambdaSettingsFrom === 'parameters';
    const endpointNames = [
      'STS',
      ...(cfg.databaseUserAuth === 'secret' ? ['Secrets Manager'] : []),
      ...(settingsFromParameters ? ['SSM'] : []),
    ];
    const awsEndpoints =
      endpointNames.length === 1 ? endpointNames[0] : `${endpointNames.slice(0, -1).join(', ')} and ${endpointNames[endpointNames.length - 1]}`;
    const settingsPath = cfg.lambdaSettingsParameterPath;
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
      // The AWS endpoints it may reach depend on the modes (Secrets Manager, SSM).
      description: `connectiontest-lambda: egress to the RDS Proxy endpoint (5432) and the ${awsEndpoints} endpoint${endpointNames.length > 1 ? 's' : ''} (443) only`,
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

    // An interface endpoint (private DNS) for an AWS API the function calls, which admits
    // the function alone: there is no other way out of these subnets.
    const functionEndpoint = (id: string, service: ec2.InterfaceVpcEndpointAwsService, name: string, label: string, purpose: string) => {
      const group = new ec2.SecurityGroup(this, `${id}SecurityGroup`, {
        vpc: this.vpc,
        securityGroupName: `connectiontest-${name}-endpoint-sg`,
        description: `${label} interface endpoint: HTTPS from connectiontest-lambda only`,
        allowAllOutbound: false,
      });
      const endpoint = this.vpc.addInterfaceEndpoint(id, { service, privateDnsEnabled: true, subnets: { subnets }, securityGroups: [group], open: false });
      // Adds the ingress rule on the endpoint's group and the egress rule on the Lambda's.
      endpoint.connections.allowDefaultPortFrom(this.lambdaSecurityGroup, `HTTPS from connectiontest-lambda to ${label} (${purpose})`);
    };
    functionEndpoint('StsEndpoint', ec2.InterfaceVpcEndpointAwsService.STS, 'sts', 'STS', 'AssumeRole');
    // The password secret lives in the database account; this endpoint serves calls for any
    // account's secrets, and the assumed role's credentials decide what they may read.
    if (cfg.databaseUserAuth === 'secret') {
      const service = ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER;
      functionEndpoint('SecretsManagerEndpoint', service, 'secretsmanager', 'Secrets Manager', 'the database user password');
    }
    if (settingsFromParameters) {
      functionEndpoint('SsmEndpoint', ec2.InterfaceVpcEndpointAwsService.SSM, 'ssm', 'Systems Manager', 'Parameter Store settings');
    }

    // --- IAM -------------------------------------------------------------------------------
    this.role = new iam.Role(this, 'LambdaRole', {
      roleName: cfg.lambdaRoleName,
      description: settingsFromParameters
        ? `connectiontest-lambda: assume the database account role, read its settings under ${settingsPath}, run in the VPC`
        : 'connectiontest-lambda: assume the database account role, run in the VPC',
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
        ...(settingsFromParameters
          ? {
              ReadSettings: new iam.PolicyDocument({
                statements: [
                  new iam.PolicyStatement({
                    sid: 'ReadSettings',
                    actions: ['ssm:GetParametersByPath'],
                    resources: [settingsPath, `${settingsPath}/*`].map((p) => `arn:${this.partition}:ssm:${this.region}:${this.account}:parameter${p}`),
                  }),
                ],
              }),
            }
          : {}),
      },
    });
    Validations.of(this.role).acknowledge({
      id: 'AwsSolutions::AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole]',
      reason:
        'AWSLambdaVPCAccessExecutionRole is the AWS-maintained minimum for a function in a VPC: CloudWatch Logs ' +
        'writes plus the ec2 network-interface calls Lambda makes to attach the function to its subnets, which ' +
        'EC2 only authorizes on Resource "*". A hand-written copy would be the same wildcard without AWS updates. ' +
        'Beyond it this stack adds sts:AssumeRole on the one database-account role ARN (and, when the settings come from ' +
        'Parameter Store, ssm:GetParametersByPath on their path).',
    });
    if (settingsFromParameters) {
      Validations.of(this.role).acknowledge({
        id: `AwsSolutions::AwsSolutions-IAM5[Resource::arn:${this.partition}:ssm:${this.region}:${this.account}:parameter${settingsPath}/*]`,
        reason:
          `The function reads its settings with GetParametersByPath (recursive) under ${settingsPath}; "${settingsPath}/*" names the ` +
          'parameters below that one path, which this stack writes itself, and no other parameter of the account.',
      });
    }

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
    const settings = functionSettings(cfg, dbRoleArn);
    let environment: Record<string, string>;
    if (settingsFromParameters) {
      // None of these is a secret (the password stays in Secrets Manager): String parameters.
      // Parameter Store refuses an empty value, so a setting not known yet is left out.
      for (const setting of settings.filter((st) => st.value !== '')) {
        this.settingsParameters[setting.parameter] = new ssm.StringParameter(this, `Setting-${setting.parameter}`, {
          parameterName: `${settingsPath}/${setting.parameter}`,
          stringValue: setting.value,
          description: `connectiontest-lambda setting (environment variable ${setting.env})`,
        });
      }
      environment = { CONFIG_PARAMETER_PATH: settingsPath };
    } else {
      environment = Object.fromEntries(settings.map((st) => [st.env, st.value]));
    }

    this.function = new lambda.Function(this, 'ConnectionTestFunction', {
      functionName,
      description:
        cfg.databaseUserAuth === 'secret'
          ? 'Proves the cross-account path: AssumeRole, the Secrets Manager password, TLS to the RDS Proxy endpoint, a read'
          : 'Proves the cross-account path: AssumeRole, IAM token, TLS to the RDS Proxy endpoint, a read',
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
    // The function reads its settings at init: they exist before it does.
    this.function.node.addDependency(...Object.values(this.settingsParameters));
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
        'application_rds_proxy_endpoint is empty, so the function has no proxy endpoint (RDS_PROXY_APPLICATION_ENDPOINT, or parameter ' +
          'hostname): expected before DatabaseStack exists; make deploy sets it in its third phase',
      );
    }
    if (cfg.databaseUserAuth === 'secret' && !cfg.applicationDbSecretArn) {
      Annotations.of(this.function).addInfo(
        'application_db_secret_arn is empty, so DB_SECRET_ARN is not set: expected before DatabaseStack exists; ' +
          'make deploy sets it in its third phase from DatabaseStack output ApplicationUserSecretArn',
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
