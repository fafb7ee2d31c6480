/** Which code the function gets: the built zip, or the stand-in (with a warning), never silently. */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Annotations, Match } from 'aws-cdk-lib/assertions';
import { ContextError } from '../lib/config';
import { STAND_IN_DIR, STAND_IN_WARNING } from '../lib/lambda-code';
import { synth } from './helpers';

const made: string[] = [];
afterAll(() => made.forEach((d) => fs.rmSync(d, { recursive: true, force: true })));

function tempZip(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lambda-zip-'));
  made.push(dir);
  const zip = path.join(dir, 'bootstrap.zip');
  fs.writeFileSync(zip, 'PK\u0005\u0006' + '\u0000'.repeat(18)); // an empty zip archive
  return zip;
}

const missingZip = () => path.join(os.tmpdir(), 'definitely-not-built', 'bootstrap.zip');

describe('lambda code source', () => {
  test('auto without the zip: stand-in asset and a synth warning that says how to build', () => {
    const printed = jest.spyOn(console, 'error').mockImplementation(() => undefined);
    try {
      const s = synth({ lambda_code_source: 'auto', lambda_zip_path: missingZip() }, false);
      expect(printed.mock.calls.flat().join('\n')).toMatch(/WARNING connectiontest-lambda uses the STAND-IN asset .*bootstrap.zip is absent/);
      expect(s.application.usesStandInAsset).toBe(true);
      expect(s.application.lambdaAssetPath).toBe(STAND_IN_DIR);
      const warnings = Annotations.fromStack(s.application).findWarning('*', Match.stringLikeRegexp('STAND-IN asset'));
      expect(warnings).toHaveLength(1);
      expect(JSON.stringify(warnings[0].entry.data)).toContain("Run 'make build'");
      expect(JSON.stringify(warnings[0].entry.data)).toContain(STAND_IN_WARNING);
    } finally {
      printed.mockRestore();
    }
  });

  test('auto with the zip: the zip, no warning', () => {
    const zip = tempZip();
    const s = synth({ lambda_code_source: 'auto', lambda_zip_path: zip }, false);
    expect(s.application.usesStandInAsset).toBe(false);
    expect(Annotations.fromStack(s.application).findWarning('*', Match.stringLikeRegexp('STAND-IN'))).toHaveLength(0);
    expect(s.application.lambdaAssetPath).toBe(zip);
  });

  test('zip (what make deploy uses) refuses to synthesize without the build', () => {
    const ctx = { lambda_code_source: 'zip', lambda_zip_path: missingZip(), external_id: 'a-deployment-external-id' };
    expect(() => synth(ctx)).toThrow(ContextError);
    expect(() => synth(ctx)).toThrow(/build the function first with 'make build'/);
  });

  test('the stand-in is a runnable bootstrap that explains itself', () => {
    const bootstrap = path.join(STAND_IN_DIR, 'bootstrap');
    expect(fs.statSync(bootstrap).mode & 0o111).not.toBe(0);
    expect(fs.readFileSync(bootstrap, 'utf8')).toContain('stand-in asset');
  });
});
