/**
 * checkov (run by `make test-cdk` on both synthesized templates) reads suppressions from a
 * resource's template metadata: `Metadata.checkov.skip: [{id, comment}]`. Every suppression
 * here carries the reason a reviewer needs; the tests check that each one has one.
 */
import { CfnResource, IAspect } from 'aws-cdk-lib';
import { IConstruct } from 'constructs';

export type CheckovSkips = Record<string, string>;

const METADATA_KEY = 'checkov';

/** Skips on the CloudFormation resource of `scope` (itself if it is one, else its default child). */
export function skipCheckov(scope: IConstruct, skips: CheckovSkips): void {
  const resource = CfnResource.isCfnResource(scope) ? scope : (scope.node.defaultChild as CfnResource | undefined);
  if (!resource || !CfnResource.isCfnResource(resource)) throw new Error(`${scope.node.path} has no CloudFormation resource to carry checkov skips`);
  const existing = (resource.getMetadata(METADATA_KEY) as { skip?: { id: string; comment: string }[] } | undefined)?.skip ?? [];
  const merged = [...existing.filter((e) => !(e.id in skips)), ...Object.entries(skips).map(([id, comment]) => ({ id, comment }))];
  resource.addMetadata(METADATA_KEY, { skip: merged });
}

/** Reasons for the Lambda checks on functions that CDK adds to run its own deploy-time helpers. */
export const CDK_HELPER_FUNCTION_SKIPS: CheckovSkips = {
  CKV_AWS_115:
    'A CDK deploy-time helper (custom resource handler): CloudFormation invokes it a few times per deployment of this stack and never ' +
    'from outside, so reserved concurrency would only take capacity away from the account without limiting anything real.',
  CKV_AWS_116:
    'A CDK deploy-time helper: CloudFormation waits for its response and fails the deployment when none comes or it reports an error; ' +
    'a dead-letter queue would hold a deployment event that nobody replays.',
  CKV_AWS_117:
    'A CDK deploy-time helper that calls only AWS APIs (EC2 or Lambda) and answers CloudFormation through S3; it touches no data. ' +
    'Inside the isolated VPCs it would need interface endpoints for each of those APIs, more cost and parts, no protection gained.',
  CKV_AWS_173:
    'A CDK deploy-time helper whose environment holds no secret (at most resource names and ARNs); Lambda encrypts environment ' +
    'variables at rest with an AWS managed key.',
};

/**
 * Adds CDK_HELPER_FUNCTION_SKIPS to every Lambda function in the scope that is not one of
 * `own` (the functions this app writes itself, which must pass or carry their own reasons).
 * Recognized by resource type, not by CDK's internal construct ids, so it follows CDK's
 * helpers wherever a CDK version puts them.
 */
export class CdkHelperFunctionSkips implements IAspect {
  constructor(private readonly own: () => IConstruct[]) {}

  visit(node: IConstruct): void {
    if (!CfnResource.isCfnResource(node) || node.cfnResourceType !== 'AWS::Lambda::Function') return;
    const own = this.own().map((c) => (CfnResource.isCfnResource(c) ? c : c.node.defaultChild));
    if (own.includes(node)) return;
    skipCheckov(node, CDK_HELPER_FUNCTION_SKIPS);
  }
}
