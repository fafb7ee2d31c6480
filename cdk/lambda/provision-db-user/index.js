'use strict';
/**
 * Custom resource handler (CDK Provider framework, onEvent) that creates the application's
 * database user on the Aurora writer, logged in as the master user with the master secret:
 *
 *   Create/Update  the role exists, can LOG IN, reads everything (pg_read_all_data) and
 *                  nothing more; its sessions default to read-only; PUBLIC may not create in
 *                  schema public nor make temp tables in the database. It logs in either with
 *                  IAM only (rds_iam, no password) or, when PasswordSecretArn is given, with
 *                  the password of that secret and without rds_iam (RDS refuses a password
 *                  login to a member of rds_iam); ReadOnlySessions "false" leaves its sessions
 *                  read-write by default, so that single-user rotation, which logs in as the
 *                  user to change its own password, can (PostgreSQL refuses ALTER ROLE in a
 *                  read-only transaction). Then it reads the result back and fails if
 *                  the user holds any other power (attribute, role membership, CREATE or TEMP).
 *   Delete         drops the role (a renamed user leaves no old one behind); best effort,
 *                  so a cluster that is already unreachable never blocks `make destroy`.
 *
 * It runs in the database VPC: PostgreSQL to the cluster, HTTPS to the Secrets Manager
 * endpoint, nothing else. The passwords are held in memory only (the application user's
 * reaches the server as a SCRAM verifier, never as SQL text); nothing secret is logged or
 * returned.
 */
const { connect, scramVerifier, PgError } = require('./pg-wire');

const IDENT = /^[A-Za-z][A-Za-z0-9_]{0,62}$/;
/** The only roles the application user may be a member of, when it logs in with IAM. */
const GRANTED_ROLES = ['pg_read_all_data', 'rds_iam'];
/** The only role the application user may be a member of, when it logs in with a password. */
const PASSWORD_GRANTED_ROLES = ['pg_read_all_data'];
/** SQLSTATEs worth another try: the master password may be mid-rotation, the writer restarting. */
const RETRY_CODES = new Set(['28P01', '28000', '57P03', '53300']);

const qi = (name) => `"${name}"`; // identifiers are checked against IDENT first
const ql = (text) => `'${text.replace(/'/g, "''")}'`;

function props(event) {
  const p = event.ResourceProperties || {};
  for (const key of ['Username', 'DatabaseName']) {
    if (!IDENT.test(String(p[key] || ''))) throw new Error(`property ${key} must be a PostgreSQL identifier, got ${JSON.stringify(p[key])}`);
  }
  for (const key of ['SecretArn', 'Host', 'Port']) {
    if (!p[key]) throw new Error(`property ${key} is missing`);
  }
  if (p.ReadOnlySessions !== undefined && !['true', 'false'].includes(p.ReadOnlySessions)) {
    throw new Error(`property ReadOnlySessions must be "true" or "false", got ${JSON.stringify(p.ReadOnlySessions)}`);
  }
  return {
    username: p.Username,
    database: p.DatabaseName,
    secretArn: p.SecretArn,
    // Absent: the user logs in with IAM (the default).
    passwordSecretArn: p.PasswordSecretArn || undefined,
    readOnlySessions: p.ReadOnlySessions !== 'false',
    host: p.Host,
    port: Number(p.Port),
  };
}

/**
 * The statements run on Create and Update, as one transaction (simple query protocol).
 * `verifier`: the SCRAM verifier of the user's password; undefined for an IAM-only user.
 * `readOnlySessions`: its sessions start read-only (false only for a user that rotates its
 * own password); its privileges are read-only either way.
 */
function provisionSql(username, database, verifier, readOnlySessions = true) {
  const u = qi(username);
  const granted = verifier === undefined ? GRANTED_ROLES : PASSWORD_GRANTED_ROLES;
  return [
    `DO $$ BEGIN
       IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = ${ql(username)}) THEN CREATE ROLE ${u} LOGIN; END IF;
     END $$`,
    `ALTER ROLE ${u} WITH LOGIN NOCREATEDB NOCREATEROLE INHERIT PASSWORD ${verifier === undefined ? 'NULL' : ql(verifier)}`,
    // Any membership other than those granted below (say rds_superuser, granted by hand, or
    // rds_iam left from IAM mode) goes.
    `DO $$ DECLARE r record; BEGIN
       FOR r IN SELECT g.rolname FROM pg_catalog.pg_auth_members m
                JOIN pg_catalog.pg_roles g ON g.oid = m.roleid JOIN pg_catalog.pg_roles u ON u.oid = m.member
                WHERE u.rolname = ${ql(username)} AND g.rolname NOT IN (${granted.map(ql).join(', ')}) LOOP
         EXECUTE format('REVOKE %I FROM %I', r.rolname, ${ql(username)});
       END LOOP;
     END $$`,
    // rds_iam only for IAM logins: RDS refuses a password login to one of its members.
    ...(verifier === undefined ? [`GRANT rds_iam TO ${u}`] : []),
    `GRANT pg_read_all_data TO ${u}`,
    readOnlySessions ? `ALTER ROLE ${u} SET default_transaction_read_only = on` : `ALTER ROLE ${u} RESET default_transaction_read_only`,
    // PostgreSQL 15 and later already keep PUBLIC from creating in schema public; 14 does not.
    `REVOKE CREATE ON SCHEMA public FROM PUBLIC`,
    `REVOKE TEMPORARY ON DATABASE ${qi(database)} FROM PUBLIC`,
    `GRANT CONNECT ON DATABASE ${qi(database)} TO ${u}`,
  ].join(';\n');
}

/**
 * Reads the user back: every line of the result is a power it must not have (or, for a
 * password user, a password it lacks).
 */
function verifySql(username, database, passwordUser = false) {
  const u = ql(username);
  const granted = passwordUser ? PASSWORD_GRANTED_ROLES : GRANTED_ROLES;
  return `SELECT 'attribute ' || a FROM (
      SELECT unnest(ARRAY[
        CASE WHEN r.rolsuper THEN 'SUPERUSER' END, CASE WHEN r.rolcreaterole THEN 'CREATEROLE' END,
        CASE WHEN r.rolcreatedb THEN 'CREATEDB' END, CASE WHEN r.rolreplication THEN 'REPLICATION' END,
        CASE WHEN r.rolbypassrls THEN 'BYPASSRLS' END, CASE WHEN NOT r.rolcanlogin THEN 'NOLOGIN' END,
        ${passwordCheck(passwordUser)}]) AS a
      FROM pg_catalog.pg_authid r WHERE r.rolname = ${u}) x WHERE a IS NOT NULL
    UNION ALL SELECT 'member of ' || g.rolname FROM pg_catalog.pg_auth_members m
      JOIN pg_catalog.pg_roles g ON g.oid = m.roleid JOIN pg_catalog.pg_roles r ON r.oid = m.member
      WHERE r.rolname = ${u} AND g.rolname NOT IN (${granted.map(ql).join(', ')})
    UNION ALL SELECT 'CREATE on schema public' WHERE has_schema_privilege(${u}, 'public', 'CREATE')
    UNION ALL SELECT 'CREATE on database' WHERE has_database_privilege(${u}, ${ql(database)}, 'CREATE')
    UNION ALL SELECT 'TEMP on database' WHERE has_database_privilege(${u}, ${ql(database)}, 'TEMP')
    UNION ALL SELECT 'no membership in ' || x FROM unnest(ARRAY[${granted.map(ql).join(', ')}]) x
      WHERE NOT pg_has_role(${u}, x, 'MEMBER')`;
}

/** The verifySql term about rolpassword: an IAM user must have none, a password user one. */
function passwordCheck(passwordUser) {
  return passwordUser ? "CASE WHEN r.rolpassword IS NULL THEN 'no password' END" : "CASE WHEN r.rolpassword IS NOT NULL THEN 'a password' END";
}

/** rolpassword is only readable through pg_authid, which RDS keeps from rds_superuser. */
function verifySqlWithoutAuthid(username, database, passwordUser = false) {
  return verifySql(username, database, passwordUser)
    .replace('pg_catalog.pg_authid r', 'pg_catalog.pg_roles r')
    .replace(passwordCheck(passwordUser), 'NULL');
}

/** Takes back what provisionSql granted on the database, then drops the role. */
function dropSql(username, database) {
  return `DO $$ BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = ${ql(username)}) THEN
      EXECUTE format('REVOKE ALL ON DATABASE %I FROM %I', ${ql(database)}, ${ql(username)});
      EXECUTE format('DROP ROLE %I', ${ql(username)});
    END IF;
  END $$`;
}

async function defaultGetSecret(secretArn) {
  // The Lambda Node.js runtime ships AWS SDK v3.
  const { SecretsManagerClient, GetSecretValueCommand } = require('@aws-sdk/client-secrets-manager');
  const out = await new SecretsManagerClient({}).send(new GetSecretValueCommand({ SecretId: secretArn }));
  const s = JSON.parse(out.SecretString || '{}');
  if (!s.username || !s.password) throw new Error(`the secret ${secretArn} has no username/password fields`);
  return { username: s.username, password: s.password };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Logs in as the master user (re-reading the secret on every attempt) and runs `work`.
 * Connection failures and password failures are retried: the rotation function may be
 * between setting the new password and promoting it when the stack is first created.
 */
async function withMasterSession(p, deps, work) {
  const attempts = deps.attempts ?? 8;
  let last;
  for (let i = 1; i <= attempts; i++) {
    let session;
    try {
      const master = await deps.getSecret(p.secretArn);
      session = await connect({
        host: p.host,
        port: p.port,
        user: master.username,
        password: master.password,
        database: p.database,
        ssl: deps.ssl,
        // Per-step limits (pg-wire DEFAULT_TIMEOUTS unless overridden): no step can hang.
        timeouts: deps.timeouts,
      });
      return await work(session, master.username);
    } catch (e) {
      last = e;
      const retry = e instanceof PgError && (e.code === undefined || RETRY_CODES.has(e.code));
      deps.log(`attempt ${i}/${attempts} failed: ${e.message}${retry && i < attempts ? ' (retrying)' : ''}`);
      if (!retry) break;
      if (i < attempts) await sleep(deps.retryDelayMs ?? 15000);
    } finally {
      if (session) await session.end();
    }
  }
  throw last;
}

/**
 * The application user's current password (AWSCURRENT: what rotation last promoted), from
 * its secret, which must name this very user.
 */
async function applicationPassword(p, deps) {
  const secret = await deps.getSecret(p.passwordSecretArn);
  if (secret.username !== p.username) {
    throw new Error(`the secret ${p.passwordSecretArn} is for user ${JSON.stringify(secret.username)}, not ${p.username}`);
  }
  return secret.password;
}

async function handle(event, deps) {
  const p = props(event);
  const physicalId = `${p.username}@${p.database}`;
  deps.log(`${event.RequestType} application user ${p.username} in database ${p.database} on ${p.host}:${p.port}`);

  if (event.RequestType === 'Delete') {
    try {
      await withMasterSession(p, { ...deps, attempts: deps.deleteAttempts ?? 2 }, (s) => s.query(dropSql(p.username, p.database)));
      deps.log(`dropped role ${p.username} (if it existed)`);
    } catch (e) {
      // The IAM policies that named this user are gone with the resource, so it can no
      // longer log in through the proxy; failing here would only block the deletion.
      deps.log(`WARNING: could not drop role ${p.username}: ${e.message}; it is left in place, unreachable through the proxy`);
    }
    return { PhysicalResourceId: event.PhysicalResourceId || physicalId };
  }

  const passwordUser = p.passwordSecretArn !== undefined;
  const verifier = passwordUser ? scramVerifier(await applicationPassword(p, deps)) : undefined;
  const problems = await withMasterSession(p, deps, async (s) => {
    await s.query(provisionSql(p.username, p.database, verifier, p.readOnlySessions));
    try {
      return await s.query(verifySql(p.username, p.database, passwordUser));
    } catch (e) {
      if (e.code !== '42501') throw e; // insufficient_privilege: no access to pg_authid
      return s.query(verifySqlWithoutAuthid(p.username, p.database, passwordUser));
    }
  });
  if (problems.length > 0) {
    throw new Error(`user ${p.username} has more than read access after provisioning: ${problems.map((r) => r[0]).join('; ')}`);
  }
  const granted = passwordUser ? PASSWORD_GRANTED_ROLES : GRANTED_ROLES;
  deps.log(
    `user ${p.username}: LOGIN, ${passwordUser ? 'password of its secret' : 'IAM only'}, member of ${granted.join(' and ')}, ` +
      `${p.readOnlySessions ? 'read-only by default' : 'read-only privileges (sessions read-write, for rotation)'}`,
  );
  return { PhysicalResourceId: physicalId, Data: { Username: p.username, GrantedRoles: granted.join(',') } };
}

exports.handler = (event) =>
  handle(event, {
    getSecret: defaultGetSecret,
    // TLS verified against the RDS CAs (NODE_EXTRA_CA_CERTS=/var/runtime/ca-cert.pem).
    ssl: {},
    log: (m) => console.log(m),
  });

exports.handle = handle;
exports.provisionSql = provisionSql;
exports.verifySql = verifySql;
exports.dropSql = dropSql;
exports.GRANTED_ROLES = GRANTED_ROLES;
exports.PASSWORD_GRANTED_ROLES = PASSWORD_GRANTED_ROLES;
