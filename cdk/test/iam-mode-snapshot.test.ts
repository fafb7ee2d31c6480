/**
 * The default context (database_user_auth "iam", settings in the environment) synthesizes
 * exactly the templates it did before the password mode existed: the snapshot was recorded
 * before that change. Only content hashes are masked (code assets, the provisioning code's
 * version), since they follow the files, not the stacks' shape.
 */
import { synth } from './helpers';

/** Masks asset hashes (64 hex digits) and the provisioner's CodeVersion (16 hex digits). */
function masked(template: unknown): unknown {
  return JSON.parse(
    JSON.stringify(template)
      .replace(/[0-9a-f]{64}/g, '<asset-hash>')
      .replace(/"CodeVersion":"[0-9a-f]{16}"/g, '"CodeVersion":"<code-version>"'),
  );
}

describe('iam mode (the default context)', () => {
  const s = synth();

  test('ApplicationStack is unchanged', () => {
    expect(masked(s.appTemplate.toJSON())).toMatchSnapshot();
  });

  test('DatabaseStack is unchanged', () => {
    expect(masked(s.dbTemplate.toJSON())).toMatchSnapshot();
  });
});
