import * as fs from 'fs';
import * as path from 'path';
import { App, Validations } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import { buildApp, ConnectionTestApp } from '../lib/app';
import { STAND_IN_WARNING } from '../lib/lambda-code';

export const REPO_ROOT = path.resolve(__dirname, '..', '..');

/** The context of the repository's cdk.json: placeholders plus the feature flags. */
export function repoContext(): Record<string, unknown> {
  return JSON.parse(fs.readFileSync(path.join(REPO_ROOT, 'cdk.json'), 'utf8')).context;
}

/**
 * The external ID the tests synthesize with: cdk.json ships a placeholder, which every synth
 * refuses, so the tests give one of their own, as make synth and make deploy do.
 */
export const TEST_EXTERNAL_ID = 'test-only-external-id-0123456789';

/** cdk.json's context with overrides; the stand-in asset unless a test asks otherwise. */
export function context(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  // Path metadata (as the CLI enables it) lets tests find resources by construct path.
  return { ...repoContext(), 'aws:cdk:enable-path-metadata': true, lambda_code_source: 'stand-in', external_id: TEST_EXTERNAL_ID, ...overrides };
}

/** The environment the tests build the app with: none of the shell's (no CONNECTIONTEST_EXTERNAL_ID). */
export const TEST_ENV: Record<string, string | undefined> = {};

export interface Synthesized extends ConnectionTestApp {
  readonly appTemplate: Template;
  readonly dbTemplate: Template;
  readonly outdir: string;
}

/** Builds the real app (same code as bin/app.ts) and synthesizes it, cdk-nag included. */
export function synth(overrides: Record<string, unknown> = {}, quietStandIn = true): Synthesized {
  // No outdir: CDK makes a temporary one, which jest-autoclean removes after the tests.
  const built = buildApp(new App({ context: context(overrides) }), TEST_ENV);
  if (quietStandIn) {
    Validations.of(built.app).acknowledge({ id: STAND_IN_WARNING, reason: 'the tests use the stand-in asset on purpose' });
  }
  built.app.synth();
  return {
    ...built,
    outdir: built.app.outdir,
    appTemplate: Template.fromStack(built.application),
    dbTemplate: Template.fromStack(built.database),
  };
}

export interface Violation {
  readonly plugin: string;
  readonly rule: string;
  readonly severity: string;
  readonly paths: string[];
}

/**
 * Synthesizes and returns every validation-plugin finding (cdk-nag reports through CDK's
 * policy validation: errors make synth throw, warnings do not; both land in the report).
 */
export function validationFindings(app: App, outdir: string): Violation[] {
  let thrown: unknown;
  try {
    app.synth({ force: true });
  } catch (e) {
    thrown = e;
  }
  const reportPath = path.join(outdir, 'validation-report.json');
  if (!fs.existsSync(reportPath)) {
    if (thrown) throw thrown;
    return [];
  }
  const report = JSON.parse(fs.readFileSync(reportPath, 'utf8'));
  const out: Violation[] = [];
  for (const plugin of report.pluginReports ?? []) {
    for (const v of plugin.violations ?? []) {
      out.push({
        plugin: plugin.pluginName,
        rule: v.ruleName,
        severity: v.severity,
        paths: (v.violatingConstructs ?? []).map((c: { constructPath: string }) => c.constructPath),
      });
    }
  }
  if (thrown && out.length === 0) throw thrown;
  return out;
}

// eslint-style strictness is not needed for template JSON in tests.
type Json = any;

/**
 * Evaluates the few intrinsics these templates use (Join, Select, Split, Ref, GetAtt) with
 * the given values for Refs and attributes, to check what a value becomes at deploy time.
 */
export function evaluate(value: Json, refs: Record<string, string>): Json {
  if (typeof value === 'string' || typeof value === 'number') return value;
  if (Array.isArray(value)) return value.map((v) => evaluate(v, refs));
  if (value && typeof value === 'object') {
    const [k] = Object.keys(value);
    const arg = value[k];
    switch (k) {
      case 'Ref':
        if (!(arg in refs)) throw new Error(`no value for Ref ${arg}`);
        return refs[arg];
      case 'Fn::GetAtt': {
        const key = `${arg[0]}.${arg[1]}`;
        if (!(key in refs)) throw new Error(`no value for GetAtt ${key}`);
        return refs[key];
      }
      case 'Fn::Join':
        return (evaluate(arg[1], refs) as string[]).join(arg[0]);
      case 'Fn::Split':
        return (evaluate(arg[1], refs) as string).split(arg[0]);
      case 'Fn::Select':
        return (evaluate(arg[1], refs) as string[])[Number(arg[0])];
      default:
        throw new Error(`intrinsic ${k} not supported by the test evaluator`);
    }
  }
  return value;
}

/** Logical id of the single resource of a type whose aws:cdk:path ends with `suffix`. */
export function logicalId(template: Template, type: string, suffix: string): string {
  const found = Object.entries(template.findResources(type)).filter(([, r]) =>
    String(r.Metadata?.['aws:cdk:path'] ?? '').endsWith(suffix),
  );
  if (found.length !== 1) throw new Error(`expected one ${type} at *${suffix}, found ${found.length}`);
  return found[0][0];
}
