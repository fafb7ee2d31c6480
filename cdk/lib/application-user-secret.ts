/**
 * The application user's password for database_user_auth "secret": a Secrets Manager secret
 * in the RDS JSON shape (username, generated password; host, port, engine and dbname once
 * attached to the cluster), encrypted with a key of its own, optionally rotated by the hosted
 * single-user rotation in the database VPC.
 *
 * The role the Lambda assumes reads it. Three policies must all allow that read
 * (https://docs.aws.amazon.com/secretsmanager/latest/userguide/auth-and-access_examples_cross.html):
 * the role's identity policy, the secret's resource policy and the key policy. The key is a
 * customer managed one because the AWS managed key aws/secretsmanager cannot be used by any
 * principal of another account: this keeps the secret readable should the reader ever be a
 * principal of the application account itself.
 */
import { Duration, RemovalPolicy, Validations } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as rds from 'aws-cdk-lib/aws-rds';
import * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import { Construct } from 'constructs';

export interface ApplicationUserSecretProps {
  readonly username: string;
  readonly databaseName: string;
  readonly cluster: rds.DatabaseCluster;
  /** Days between rotations; 0: no rotation. */
  readonly rotationDays: number;
  /** Where the rotation function runs: a group that reaches the cluster and Secrets Manager. */
  readonly rotationNetwork: {
    readonly vpc: ec2.IVpc;
    readonly subnets: ec2.SubnetSelection;
    readonly securityGroup: ec2.ISecurityGroup;
  };
}

export class ApplicationUserSecret extends Construct {
  public readonly key: kms.Key;
  public readonly secret: rds.DatabaseSecret;
  /** Present when rotationDays > 0. */
  public readonly rotation?: secretsmanager.RotationSchedule;

  constructor(scope: Construct, id: string, props: ApplicationUserSecretProps) {
    super(scope, id);
    this.key = new kms.Key(this, 'Key', {
      description: `connectiontest DatabaseStack: the password secret of database user ${props.username}`,
      enableKeyRotation: true,
      removalPolicy: RemovalPolicy.DESTROY,
      pendingWindow: Duration.days(7),
    });
    this.secret = new rds.DatabaseSecret(this, 'Secret', {
      username: props.username,
      dbname: props.databaseName,
      encryptionKey: this.key,
    });
    // Adds engine, host and port: what the rotation function logs in with.
    const attached = this.secret.attach(props.cluster);
    if (props.rotationDays > 0) {
      this.rotation = attached.addRotationSchedule('Rotation', {
        automaticallyAfter: Duration.days(props.rotationDays),
        hostedRotation: secretsmanager.HostedRotation.postgreSqlSingleUser({
          vpc: props.rotationNetwork.vpc,
          vpcSubnets: props.rotationNetwork.subnets,
          securityGroups: [props.rotationNetwork.securityGroup],
        }),
      });
    } else {
      Validations.of(this.secret).acknowledge({
        id: 'AwsSolutions::AwsSolutions-SMG4',
        reason:
          'Rotation is off because database_secret_rotation_days is 0, a choice made in the context for deployments whose password ' +
          'is rotated by other means or not at all; the secret stays encrypted with its own key and readable by one role only.',
      });
    }
  }

  /**
   * Lets `role` (the role the Lambda assumes) read the secret, and no other principal through
   * the resource policy: GetSecretValue on this secret, and kms:Decrypt on its key only when
   * Secrets Manager of this region asks for it. The identity policy is a policy of its own,
   * not the role's inline one, so that the key policy (which names the role) and the role's
   * policy (which names the key) do not depend on each other.
   */
  grantReadTo(role: iam.Role): void {
    const stack = this.key.stack;
    const viaSecretsManager = { StringEquals: { 'kms:ViaService': `secretsmanager.${stack.region}.amazonaws.com` } };
    this.secret.addToResourcePolicy(
      new iam.PolicyStatement({
        sid: 'ApplicationReadsItsPassword',
        principals: [new iam.ArnPrincipal(role.roleArn)],
        actions: ['secretsmanager:GetSecretValue'],
        resources: ['*'],
      }),
    );
    this.key.addToResourcePolicy(
      new iam.PolicyStatement({
        sid: 'ApplicationDecryptsItsPasswordThroughSecretsManager',
        principals: [new iam.ArnPrincipal(role.roleArn)],
        actions: ['kms:Decrypt'],
        resources: ['*'],
        conditions: viaSecretsManager,
      }),
    );
    new iam.Policy(this, 'ReadPolicy', {
      roles: [role],
      statements: [
        new iam.PolicyStatement({ sid: 'ReadApplicationUserSecret', actions: ['secretsmanager:GetSecretValue'], resources: [this.secret.secretArn] }),
        new iam.PolicyStatement({
          sid: 'DecryptApplicationUserSecret',
          actions: ['kms:Decrypt'],
          resources: [this.key.keyArn],
          conditions: viaSecretsManager,
        }),
      ],
    });
  }
}
