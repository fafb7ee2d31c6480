/**
 * The provisioning function against a real PostgreSQL (the server binaries the Rust
 * end-to-end tests use), started here on a free port with TLS and SCRAM: what the application
 * user can and cannot do afterwards, idempotence, removal of planted powers, deletion.
 * RDS's own `rds_iam` role is stood in by a NOLOGIN role of that name; the "master user" is
 * a CREATEROLE owner of the database, as on RDS (no superuser).
 */
import { execFileSync, spawn, spawnSync, ChildProcess } from 'child_process';
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';

// eslint-disable-next-line @typescript-eslint/no-var-requires
const provision = require('../lambda/provision-db-user/index.js');
// eslint-disable-next-line @typescript-eslint/no-var-requires
const { connect } = require('../lambda/provision-db-user/pg-wire.js');

const MASTER = { username: 'dbadmin', password: "m4ster'pass\"word" };
const DB = 'example_db';
const APP = 'connectiontest';

function tool(name: string): string {
  const versions = fs.existsSync('/usr/lib/postgresql') ? fs.readdirSync('/usr/lib/postgresql').map((v) => `/usr/lib/postgresql/${v}/bin`) : [];
  for (const dir of [...(process.env.PATH ?? '').split(':'), ...versions]) {
    if (dir && fs.existsSync(path.join(dir, name))) return path.join(dir, name);
  }
  throw new Error(`${name} not found: install the PostgreSQL server binaries (apt-get install postgresql) to run this test`);
}

const asRoot = process.getuid?.() === 0;
/** Runs a PostgreSQL binary as the postgres OS user when we are root (initdb refuses root). */
function pgCmd(bin: string, args: string[]): [string, string[]] {
  return asRoot ? ['runuser', ['-u', 'postgres', '--', bin, ...args]] : [bin, args];
}

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const srv = net.createServer().listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

describe('provisioning function (real PostgreSQL)', () => {
  let dir: string;
  let port: number;
  let server: ChildProcess;
  let ca: string;
  const logs: string[] = [];
  const deps = () => ({ getSecret: async () => MASTER, ssl: { ca }, log: (m: string) => logs.push(m), retryDelayMs: 10, attempts: 2 });
  const event = (type: string, props: Record<string, unknown> = {}) => ({
    RequestType: type,
    PhysicalResourceId: type === 'Create' ? undefined : `${APP}@${DB}`,
    ResourceProperties: { SecretArn: 'arn:secret', Host: '127.0.0.1', Port: String(port), DatabaseName: DB, Username: APP, ...props },
  });

  /** psql over the Unix socket (trust) as `user`; returns trimmed output, throws on error. */
  function psql(user: string, sql: string, database = DB): string {
    const [cmd, args] = pgCmd(tool('psql'), ['-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1', '-h', dir, '-p', String(port), '-U', user, '-d', database, '-c', sql]);
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
  }
  function psqlError(user: string, sql: string): string {
    const [cmd, args] = pgCmd(tool('psql'), ['-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1', '-h', dir, '-p', String(port), '-U', user, '-d', DB, '-c', sql]);
    const r = spawnSync(cmd, args, { encoding: 'utf8' });
    if (r.status === 0) throw new Error(`expected ${JSON.stringify(sql)} to fail for ${user}`);
    return r.stderr.trim();
  }

  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'provision-pg-'));
    const data = path.join(dir, 'data');
    fs.mkdirSync(data);
    if (asRoot) execFileSync('chown', ['-R', 'postgres', dir]);
    fs.chmodSync(dir, 0o755);
    const [initCmd, initArgs] = pgCmd(tool('initdb'), ['-D', data, '-U', 'postgres', '--auth-local=trust', '--auth-host=scram-sha-256', '-E', 'UTF8']);
    execFileSync(initCmd, initArgs, { stdio: 'ignore' });
    // A self-signed certificate for 127.0.0.1: the client verifies it like the RDS CA chain.
    execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=127.0.0.1',
      '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', path.join(data, 'server.key'), '-out', path.join(data, 'server.crt')], { stdio: 'ignore' });
    if (asRoot) execFileSync('chown', ['postgres', path.join(data, 'server.key'), path.join(data, 'server.crt')]);
    fs.chmodSync(path.join(data, 'server.key'), 0o600);
    ca = fs.readFileSync(path.join(data, 'server.crt'), 'utf8');
    // TLS is mandatory over TCP, as on RDS.
    fs.writeFileSync(path.join(data, 'pg_hba.conf'), 'local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n');
    port = await freePort();
    const [cmd, args] = pgCmd(tool('postgres'), ['-D', data, '-p', String(port), '-k', dir, '-c', 'listen_addresses=127.0.0.1', '-c', 'ssl=on', '-c', 'fsync=off']);
    server = spawn(cmd, args, { stdio: 'ignore' });
    for (let i = 0; ; i++) {
      try {
        psql('postgres', 'SELECT 1', 'postgres');
        break;
      } catch (e) {
        if (i > 100) throw e;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    // What RDS has before the provisioning runs: rds_iam, a master user that is not a
    // superuser but may create roles, owning the application database, with some data.
    psql('postgres', `CREATE ROLE rds_iam NOLOGIN; CREATE ROLE ${MASTER.username} LOGIN CREATEROLE CREATEDB PASSWORD '${MASTER.password.replace(/'/g, "''")}'`, 'postgres');
    psql('postgres', `CREATE DATABASE ${DB} OWNER ${MASTER.username}`, 'postgres');
    psql(MASTER.username, 'CREATE TABLE orders (id int); INSERT INTO orders VALUES (1), (2), (3)');
  });

  afterAll(async () => {
    if (server && server.exitCode === null) {
      const exited = new Promise((r) => server.once('exit', r));
      // pg_ctl, not a signal to runuser: runuser does not pass SIGINT on to postgres.
      const [cmd, args] = pgCmd(tool('pg_ctl'), ['stop', '-D', path.join(dir, 'data'), '-m', 'immediate']);
      spawnSync(cmd, args, { stdio: 'ignore' });
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([exited, new Promise((r) => (timer = setTimeout(r, 5000)))]);
      clearTimeout(timer);
      if (server.exitCode === null) server.kill('SIGKILL');
    }
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  test('Create: the user logs in, reads everything, and can do nothing else', async () => {
    const out = await provision.handle(event('Create'), deps());
    expect(out).toEqual({ PhysicalResourceId: `${APP}@${DB}`, Data: { Username: APP, GrantedRoles: 'pg_read_all_data,rds_iam' } });

    expect(psql('postgres', `SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolpassword IS NULL FROM pg_authid WHERE rolname = '${APP}'`)).toBe('t|f|f|f|t');
    expect(psql('postgres', `SELECT string_agg(g.rolname, ',' ORDER BY g.rolname) FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = '${APP}'::regrole`)).toBe('pg_read_all_data,rds_iam');

    // Reads: a table the master user created, without any GRANT on it.
    expect(psql(APP, 'SELECT count(*) FROM orders')).toBe('3');
    // Writes, DDL and temp tables fail, even with the read-only default switched off.
    expect(psqlError(APP, 'INSERT INTO orders VALUES (4)')).toMatch(/read-only transaction/);
    const rw = (sql: string) => `BEGIN READ WRITE; ${sql}; COMMIT`;
    expect(psqlError(APP, rw('INSERT INTO orders VALUES (4)'))).toMatch(/permission denied for table orders/);
    expect(psqlError(APP, rw('CREATE TABLE mine (x int)'))).toMatch(/permission denied for schema public/);
    expect(psqlError(APP, rw('CREATE TEMP TABLE mine (x int)'))).toMatch(/permission denied to create temporary tables/);
    expect(psqlError(APP, rw('CREATE ROLE other'))).toMatch(/permission denied to create role/);
    expect(psql('postgres', 'SELECT count(*) FROM orders')).toBe('3');
  });

  test('the log names the user and the database, never the password', async () => {
    expect(logs.join('\n')).toContain(`Create application user ${APP} in database ${DB} on 127.0.0.1:${port}`);
    expect(logs.join('\n')).not.toContain(MASTER.password);
  });

  test('Update is idempotent and takes away powers granted by hand', async () => {
    psql('postgres', `GRANT pg_write_all_data TO ${APP}; ALTER ROLE ${APP} CREATEDB PASSWORD 'x'`);
    await provision.handle(event('Update'), deps());
    expect(psql('postgres', `SELECT rolcreatedb, rolpassword IS NULL FROM pg_authid WHERE rolname = '${APP}'`)).toBe('f|t');
    expect(psql('postgres', `SELECT string_agg(g.rolname, ',' ORDER BY g.rolname) FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = '${APP}'::regrole`)).toBe('pg_read_all_data,rds_iam');
    await provision.handle(event('Update'), deps());
  });

  test('a power the master user cannot take away fails the deployment, naming it', async () => {
    psql('postgres', `ALTER ROLE ${APP} BYPASSRLS`);
    await expect(provision.handle(event('Update'), deps())).rejects.toThrow(`user ${APP} has more than read access after provisioning: attribute BYPASSRLS`);
    psql('postgres', `ALTER ROLE ${APP} NOBYPASSRLS`);
  });

  test('a wrong master password fails with the server message and no password in it', async () => {
    const bad = { ...deps(), getSecret: async () => ({ username: MASTER.username, password: 'wrong-password' }) };
    const err = await provision.handle(event('Update'), bad).catch((e: Error) => e);
    expect(err.code).toBe('28P01');
    expect(err.message).toBe(`FATAL 28P01: password authentication failed for user "${MASTER.username}"`);
    expect(err.message).not.toContain('wrong-password');
  });

  test('TLS is verified: a different CA is refused', async () => {
    // With no CA given, Node's default trust store does not know the self-signed certificate.
    const other = { ...deps(), attempts: 1, ssl: {} };
    await expect(provision.handle(event('Update'), other)).rejects.toThrow(/TLS handshake with 127\.0\.0\.1:\d+ failed: self.signed certificate/);
  });

  test('the client reads query results (rows as text, NULL as null)', async () => {
    const s = await connect({ host: '127.0.0.1', port, user: MASTER.username, password: MASTER.password, database: DB, ssl: { ca } });
    expect(await s.query("SELECT 1, NULL, 'a''b'")).toEqual([['1', null, "a'b"]]);
    await s.end();
  });

  test('a query slower than its timeout fails naming the step and closes that session; the next one works', async () => {
    const s = await connect({ host: '127.0.0.1', port, user: MASTER.username, password: MASTER.password, database: DB, ssl: { ca } });
    await expect(s.query('SELECT pg_sleep(5)', { timeoutMs: 200 })).rejects.toThrow(/^query: no answer within 200 ms$/);
    await expect(s.query('SELECT 1')).rejects.toThrow(/^query: no answer within 200 ms$/);
    await s.end();
    const again = await connect({ host: '127.0.0.1', port, user: MASTER.username, password: MASTER.password, database: DB, ssl: { ca }, timeouts: { queryMs: 5000 } });
    expect(await again.query('SELECT 2')).toEqual([['2']]);
    await again.end();
  });

  test('Delete drops the role; a second Delete is a no-op; an unreachable cluster does not block', async () => {
    await provision.handle(event('Delete'), deps());
    expect(psql('postgres', `SELECT count(*) FROM pg_roles WHERE rolname = '${APP}'`)).toBe('0');
    await provision.handle(event('Delete'), deps());
    const out = await provision.handle(event('Delete', { Port: '1' }), deps());
    expect(out).toEqual({ PhysicalResourceId: `${APP}@${DB}` });
    expect(logs[logs.length - 1]).toMatch(/^WARNING: could not drop role connectiontest: could not connect to 127.0.0.1:1/);
  });

  describe('with PasswordSecretArn (database_user_auth "secret")', () => {
    const APP_SECRET = { username: APP, password: 'app-Pa55word-from-its-secret' };
    const withAppSecret = (appSecret = APP_SECRET) => ({
      ...deps(),
      getSecret: async (arn: string) => (arn === 'arn:app-secret' ? appSecret : MASTER),
    });
    const passwordEvent = (type: string) => event(type, { PasswordSecretArn: 'arn:app-secret' });
    const memberships = () =>
      psql('postgres', `SELECT string_agg(g.rolname, ',' ORDER BY g.rolname) FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = '${APP}'::regrole`);

    test('Create: the user logs in with the secret password, is not in rds_iam, and reads only', async () => {
      const out = await provision.handle(passwordEvent('Create'), withAppSecret());
      expect(out).toEqual({ PhysicalResourceId: `${APP}@${DB}`, Data: { Username: APP, GrantedRoles: 'pg_read_all_data' } });
      expect(memberships()).toBe('pg_read_all_data');
      // Stored as the SCRAM verifier computed by the function: the server never saw the password.
      expect(psql('postgres', `SELECT rolpassword FROM pg_authid WHERE rolname = '${APP}'`)).toMatch(/^SCRAM-SHA-256\$4096:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+$/);
      const session = await connect({ host: '127.0.0.1', port, user: APP, password: APP_SECRET.password, database: DB, ssl: { ca } });
      expect(await session.query('SELECT count(*) FROM orders')).toEqual([['3']]);
      await expect(session.query('INSERT INTO orders VALUES (4)')).rejects.toThrow(/read-only transaction/);
      await session.end();
      await expect(connect({ host: '127.0.0.1', port, user: APP, password: 'not-the-password', database: DB, ssl: { ca } })).rejects.toThrow(
        /28P01: password authentication failed/,
      );
      expect(logs.join('\n')).not.toContain(APP_SECRET.password);
    });

    test('Update after a rotation sets the current password of the secret', async () => {
      const rotated = { username: APP, password: 'rotated-Pa55word' };
      await provision.handle(passwordEvent('Update'), withAppSecret(rotated));
      const session = await connect({ host: '127.0.0.1', port, user: APP, password: rotated.password, database: DB, ssl: { ca } });
      await session.end();
    });

    test('a secret for another user fails the deployment without touching the database', async () => {
      const before = psql('postgres', `SELECT rolpassword FROM pg_authid WHERE rolname = '${APP}'`);
      const err = await provision.handle(passwordEvent('Update'), withAppSecret({ username: 'someone_else', password: 'p4ss-of-someone-else' })).catch((e: Error) => e);
      expect(err.message).toBe(`the secret arn:app-secret is for user "someone_else", not ${APP}`);
      expect(psql('postgres', `SELECT rolpassword FROM pg_authid WHERE rolname = '${APP}'`)).toBe(before);
    });

    test('read-only sessions keep single-user rotation from changing the password; ReadOnlySessions "false" lets it, and nothing else', async () => {
      // What the hosted single-user rotation does: log in as the user, ALTER its own password.
      const selfRotate = async (password: string, next: string) => {
        const session = await connect({ host: '127.0.0.1', port, user: APP, password, database: DB, ssl: { ca } });
        try {
          await session.query(`ALTER USER ${APP} WITH PASSWORD '${next}'`);
        } finally {
          await session.end();
        }
      };
      await provision.handle(passwordEvent('Update'), withAppSecret());
      await expect(selfRotate(APP_SECRET.password, 'next-Pa55word')).rejects.toThrow(/cannot execute ALTER ROLE in a read-only transaction/);

      await provision.handle(event('Update', { PasswordSecretArn: 'arn:app-secret', ReadOnlySessions: 'false' }), withAppSecret());
      await selfRotate(APP_SECRET.password, 'next-Pa55word');
      // Its privileges stay read-only: writes and DDL still fail.
      expect(psqlError(APP, 'INSERT INTO orders VALUES (4)')).toMatch(/permission denied for table orders/);
      expect(psqlError(APP, 'CREATE TABLE mine (x int)')).toMatch(/permission denied for schema public/);
      await expect(provision.handle(event('Update', { PasswordSecretArn: 'arn:app-secret', ReadOnlySessions: 'no' }), withAppSecret())).rejects.toThrow(
        'property ReadOnlySessions must be "true" or "false", got "no"',
      );
    });

    test('back to IAM mode: the password goes and rds_iam comes back', async () => {
      await provision.handle(event('Update'), withAppSecret());
      expect(psql('postgres', `SELECT rolpassword IS NULL FROM pg_authid WHERE rolname = '${APP}'`)).toBe('t');
      expect(memberships()).toBe('pg_read_all_data,rds_iam');
      // And from IAM mode to a password again: rds_iam is taken away.
      await provision.handle(passwordEvent('Update'), withAppSecret());
      expect(memberships()).toBe('pg_read_all_data');
    });
  });

  test('bad identifiers never reach SQL', async () => {
    await expect(provision.handle(event('Create', { Username: 'x"; DROP TABLE orders; --' }), deps())).rejects.toThrow(/property Username must be a PostgreSQL identifier/);
  });
});
