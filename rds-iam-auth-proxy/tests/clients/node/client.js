// A Node.js program connecting through the auth proxy as any program would: node-postgres
// with `ssl: false` (the proxy's local side has no TLS) and no password. Prints one JSON
// line with what it read.
//
//     node client.js HOST PORT USER DBNAME
//
// Run by tests/languages.rs; make proxy-clients installs node_modules (npm ci).
'use strict';

const { Client } = require('pg');

async function main() {
  const [host, port, user, database] = process.argv.slice(2, 6);
  // The point is that no password is needed: refuse to run with one at hand, so a pass
  // here cannot come from one.
  if (process.env.PGPASSWORD) {
    throw new Error('PGPASSWORD is set: this client must connect without a password');
  }
  const client = new Client({
    host,
    port: Number(port),
    user,
    database,
    ssl: false,
    connectionTimeoutMillis: 20000,
  });
  await client.connect();
  try {
    const who = await client.query('SELECT current_user');
    // Extended protocol (Parse, Bind, Execute) with a bound parameter.
    const plus = await client.query('SELECT $1::int + 1 AS n', [41]);
    await client.query('BEGIN');
    await client.query('CREATE TEMP TABLE proxy_client_rows (id int, name text)');
    await client.query('INSERT INTO proxy_client_rows VALUES ($1, $2), ($3, $4)', [1, 'alpha', 2, 'beta']);
    const rows = await client.query('SELECT id, name FROM proxy_client_rows ORDER BY id');
    await client.query('COMMIT');
    const version = require('pg/package.json').version;
    console.log(
      JSON.stringify({
        client: `node-postgres ${version} (node ${process.version})`,
        current_user: who.rows[0].current_user,
        plus_one: plus.rows[0].n,
        rows: rows.rows.map((r) => [r.id, r.name]),
        // A TLS socket would say encrypted: true.
        ssl: Boolean(client.connection.stream.encrypted),
      }),
    );
  } finally {
    await client.end();
  }
}

main().catch((err) => {
  console.error(`node client: ${err.stack || err}`);
  process.exit(1);
});
