/**
 * checkov suppressions in the synthesized templates (make test-cdk runs checkov itself on
 * cdk.out and fails on any unsuppressed finding): exactly the expected ones, each with a reason.
 */
import { CDK_HELPER_FUNCTION_SKIPS } from '../lib/checkov';
import { synth } from './helpers';

interface Skip {
  stack: string;
  path: string;
  type: string;
  id: string;
  comment: string;
}

function skips(): Skip[] {
  const s = synth({ alarm_email: 'ops@example.com' });
  // The password user and the Parameter Store settings add no suppression of their own.
  const modes = synth({ database_user_auth: 'secret', lambda_settings_from: 'parameters' });
  const out: Skip[] = [];
  for (const [stack, t] of [
    ['ApplicationStack', s.appTemplate],
    ['DatabaseStack', s.dbTemplate],
    ['ApplicationStack', modes.appTemplate],
    ['DatabaseStack', modes.dbTemplate],
  ] as const) {
    for (const r of Object.values(t.toJSON().Resources) as { Type: string; Metadata?: Record<string, any> }[]) {
      for (const k of r.Metadata?.checkov?.skip ?? []) {
        out.push({ stack, path: r.Metadata?.['aws:cdk:path'], type: r.Type, id: k.id, comment: k.comment });
      }
    }
  }
  return out;
}

describe('checkov suppressions', () => {
  const all = skips();

  test('only on Lambda functions: the two of ours carry their own two, every CDK helper the four helper reasons', () => {
    expect(all.every((k) => k.type === 'AWS::Lambda::Function')).toBe(true);
    const byFunction = new Map<string, string[]>();
    // (Each template of both contexts: a function in both carries the same ids in each.)
    for (const k of all) byFunction.set(`${k.stack} ${k.path}`, [...new Set([...(byFunction.get(`${k.stack} ${k.path}`) ?? []), k.id])].sort());
    expect(byFunction.get('ApplicationStack ApplicationStack/ConnectionTestFunction/Resource')).toEqual(['CKV_AWS_116', 'CKV_AWS_173']);
    expect(byFunction.get('DatabaseStack DatabaseStack/Provisioner/Resource')).toEqual(['CKV_AWS_116', 'CKV_AWS_173']);
    const helpers = [...byFunction.entries()].filter(([k]) => !k.endsWith('/ConnectionTestFunction/Resource') && !k.endsWith('/Provisioner/Resource'));
    // The default-security-group helper in each stack, and the provider framework in DatabaseStack.
    expect(helpers).toHaveLength(3);
    for (const [, ids] of helpers) expect(ids).toEqual(Object.keys(CDK_HELPER_FUNCTION_SKIPS).sort());
  });

  test('no suppression of a check our own functions could pass (concurrency, VPC)', () => {
    const own = all.filter((k) => k.path.endsWith('/ConnectionTestFunction/Resource') || k.path.endsWith('/Provisioner/Resource'));
    expect(own.map((k) => k.id)).not.toContain('CKV_AWS_115');
    expect(own.map((k) => k.id)).not.toContain('CKV_AWS_117');
  });

  test('every suppression carries a specific reason', () => {
    for (const k of all) {
      expect(k.comment.length).toBeGreaterThan(120);
      expect(k.comment).not.toMatch(/out of scope|not in scope|false positive|TODO/i);
    }
  });
});
