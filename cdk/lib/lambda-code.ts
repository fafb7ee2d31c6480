/**
 * Where the connection-test function's code comes from.
 *
 * The real code is `target/lambda/connection-test/bootstrap.zip`, built by `make build`
 * (cargo lambda). Synth must not need a Rust build (fresh clones, the tests, CI), so with
 * `lambda_code_source` = "auto" (the default) a missing zip is replaced by a stand-in
 * directory whose `bootstrap` only reports that it is a stand-in, and synth prints a warning.
 * `make deploy` passes `lambda_code_source=zip`, which refuses to synthesize without the zip,
 * so the stand-in can never be deployed by the supported path.
 */
import * as fs from 'fs';
import * as path from 'path';
import { Annotations } from 'aws-cdk-lib';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import { Construct } from 'constructs';
import { AppConfig, ContextError } from './config';

/** The repository root: cdk/lib/ -> ../.. (same for ts-node, jest and compiled output). */
export const REPO_ROOT = path.resolve(__dirname, '..', '..');
export const STAND_IN_DIR = path.resolve(__dirname, '..', 'test-assets', 'stand-in-lambda');
/** Id of the synth warning printed when the stand-in is used. */
export const STAND_IN_WARNING = 'connectiontest:stand-in-asset';

export interface LambdaCodeChoice {
  readonly code: lambda.Code;
  /** Absolute path of what was packaged. */
  readonly assetPath: string;
  readonly standIn: boolean;
}

export function chooseLambdaCode(scope: Construct, cfg: AppConfig): LambdaCodeChoice {
  const zip = path.isAbsolute(cfg.lambdaZipPath) ? cfg.lambdaZipPath : path.join(REPO_ROOT, cfg.lambdaZipPath);
  const zipExists = fs.existsSync(zip) && fs.statSync(zip).isFile();

  if (cfg.lambdaCodeSource === 'zip' || (cfg.lambdaCodeSource === 'auto' && zipExists)) {
    if (!zipExists) {
      throw new ContextError(
        'lambda_zip_path',
        `lambda_code_source is "zip" but ${zip} does not exist: build the function first with 'make build'`,
      );
    }
    return { code: lambda.Code.fromAsset(zip), assetPath: zip, standIn: false };
  }

  const why = cfg.lambdaCodeSource === 'stand-in' ? 'lambda_code_source is "stand-in"' : `${zip} is absent`;
  const message =
    `connectiontest-lambda uses the STAND-IN asset (${why}): the template is fine to inspect ` +
    `but the function would only report that it is a stand-in. Run 'make build' for the real one.`;
  Annotations.of(scope).addWarningV2(STAND_IN_WARNING, message);
  return { code: lambda.Code.fromAsset(STAND_IN_DIR), assetPath: STAND_IN_DIR, standIn: true };
}
