/** Builds the app: both stacks from one validated config, with cdk-nag AwsSolutions on both. */
import { App, Aspects, Validations } from 'aws-cdk-lib';
import { AwsSolutionsChecks } from 'cdk-nag';
import { ApplicationStack } from './application-stack';
import { CdkHelperFunctionSkips } from './checkov';
import { loadConfig } from './config';
import { DatabaseStack } from './database-stack';

export interface ConnectionTestApp {
  readonly app: App;
  readonly application: ApplicationStack;
  readonly database: DatabaseStack;
}

/** `env`: the environment the external ID may come from (see loadConfig); the process's by default. */
export function buildApp(app: App, env: Record<string, string | undefined> = process.env): ConnectionTestApp {
  const config = loadConfig(app.node, env);
  const application = new ApplicationStack(app, 'ApplicationStack', {
    config,
    description: 'connectiontest: application account (VPC shared with RAM, STS endpoint, connectiontest-lambda)',
  });
  const database = new DatabaseStack(app, 'DatabaseStack', {
    config,
    description: 'connectiontest: database account (Aurora PostgreSQL, RDS Proxy with IAM auth, cross-account role)',
  });
  // checkov: reasons for CDK's own helper functions (ours carry their own, see the stacks).
  Aspects.of(application).add(new CdkHelperFunctionSkips(() => [application.function]));
  Aspects.of(database).add(new CdkHelperFunctionSkips(() => [database.provisioner]));
  // cdk-nag v3 is a policy-validation plugin: any unacknowledged finding fails synth.
  Validations.of(app).addPlugins(new AwsSolutionsChecks(app, { verbose: true }));
  return { app, application, database };
}
