/**
 * The provisioning function's PostgreSQL client against servers on 127.0.0.1 that misbehave:
 * never answer, close with half a message sent, stop in the middle of a handshake. Every step
 * must end, within its timeout or at once when the connection goes, with an error naming the
 * step: a hung step would hold the custom resource (and, on Delete, the stack's deletion)
 * until the function's own 5-minute timeout.
 */
import * as net from 'net';

// eslint-disable-next-line @typescript-eslint/no-var-requires
const { connect, DEFAULT_TIMEOUTS, PgError } = require('../lambda/provision-db-user/pg-wire.js');
// eslint-disable-next-line @typescript-eslint/no-var-requires
const provision = require('../lambda/provision-db-user/index.js');

/** A server on 127.0.0.1 that hands each accepted socket to `onConnection`. */
interface Server {
  port: number;
  close(): Promise<void>;
}

const servers: Server[] = [];

async function serve(onConnection: (socket: net.Socket) => void): Promise<Server> {
  const sockets = new Set<net.Socket>();
  const srv = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    onConnection(socket);
  });
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const server = {
    port: (srv.address() as net.AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        srv.close(() => resolve());
      }),
  };
  servers.push(server);
  return server;
}

afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

// Backend messages, as a server writes them.
const int32 = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n);
  return b;
};
const msg = (type: string, body: Buffer) => Buffer.concat([Buffer.from(type, 'ascii'), int32(body.length + 4), body]);
const AUTH_OK = msg('R', int32(0));
const READY = msg('Z', Buffer.from('I'));
const SASL = msg('R', Buffer.concat([int32(10), Buffer.from('SCRAM-SHA-256\0\0')]));
const ROW_DESCRIPTION = msg('T', Buffer.concat([Buffer.from([0, 1]), Buffer.from('x\0'), Buffer.alloc(18)]));

/** A server that completes a trust login (no TLS), then hands each later chunk to `onQuery`. */
function trustServer(onQuery: (socket: net.Socket, data: Buffer) => void): Promise<Server> {
  return serve((socket) => {
    let started = false;
    socket.on('data', (d) => {
      if (!started) {
        started = true;
        socket.write(Buffer.concat([AUTH_OK, READY]));
      } else {
        onQuery(socket, d);
      }
    });
  });
}

const LONG = { connectMs: 30000, tlsMs: 30000, authMs: 30000, queryMs: 30000 };
const login = (port: number, extra: Record<string, unknown> = {}) =>
  connect({ host: '127.0.0.1', port, user: 'dbadmin', password: 'secret-password', database: 'example_db', ssl: false, timeouts: LONG, ...extra });

interface Outcome {
  state: 'resolved' | 'rejected' | 'pending';
  error?: Error;
  ms: number;
}

/** How `p` ends within `limitMs` ("pending" if it has not by then): the test never hangs itself. */
async function outcome(p: Promise<unknown>, limitMs = 3000): Promise<Outcome> {
  const start = Date.now();
  let timer: NodeJS.Timeout | undefined;
  const pending = new Promise<Outcome>((resolve) => {
    timer = setTimeout(() => resolve({ state: 'pending', ms: Date.now() - start }), limitMs);
  });
  const settled = p.then(
    (): Outcome => ({ state: 'resolved', ms: Date.now() - start }),
    (error: Error): Outcome => ({ state: 'rejected', error, ms: Date.now() - start }),
  );
  const o = await Promise.race([settled, pending]);
  clearTimeout(timer);
  return o;
}

function expectRejected(o: Outcome, message: RegExp, withinMs: number) {
  expect(o.state).toBe('rejected');
  expect(o.error).toBeInstanceOf(PgError);
  expect(o.error!.message).toMatch(message);
  expect(o.error!.message).not.toContain('secret-password');
  expect(o.ms).toBeLessThan(withinMs);
}

describe('pg-wire: every step ends, with an error naming it', () => {
  test('a server that accepts and never answers: TLS (SSLRequest) fails within its timeout', async () => {
    const srv = await serve(() => undefined);
    const o = await outcome(login(srv.port, { ssl: {}, timeouts: { ...LONG, tlsMs: 300 } }));
    expectRejected(o, /^TLS with 127\.0\.0\.1:\d+: no answer to SSLRequest within 300 ms$/, 2000);
    expect(o.ms).toBeGreaterThanOrEqual(250);
  });

  test('a server that accepts and never answers, without TLS: authentication fails within its timeout', async () => {
    const srv = await serve(() => undefined);
    const o = await outcome(login(srv.port, { timeouts: { ...LONG, authMs: 300 } }));
    expectRejected(o, /^authentication as dbadmin: no answer within 300 ms$/, 2000);
  });

  test('a server that closes right after accepting: TLS fails at once', async () => {
    const srv = await serve((s) => s.end());
    const o = await outcome(login(srv.port, { ssl: {} }));
    expectRejected(o, /^TLS with 127\.0\.0\.1:\d+: the server closed the connection before answering SSLRequest$/, 2000);
  });

  test('half a message, then close, during authentication: fails at once', async () => {
    const srv = await serve((s) => s.once('data', () => s.end(AUTH_OK.subarray(0, 7))));
    const o = await outcome(login(srv.port));
    expectRejected(o, /^authentication as dbadmin: the server closed the connection \(7 bytes of an unfinished message unread\)$/, 2000);
  });

  test('half a message, then close, during a query: fails at once, and so does the next query', async () => {
    const srv = await trustServer((s) => s.end(ROW_DESCRIPTION.subarray(0, 10)));
    const session = await login(srv.port);
    const o = await outcome(session.query('SELECT 1'));
    expectRejected(o, /^query: the server closed the connection \(10 bytes of an unfinished message unread\)$/, 2000);
    expectRejected(await outcome(session.query('SELECT 2')), /^query: the server closed the connection/, 500);
    await session.end();
  });

  test('a query the server never answers fails within its timeout (default or per query), and ends the session', async () => {
    const srv = await trustServer(() => undefined);
    const session = await login(srv.port, { timeouts: { ...LONG, queryMs: 300 } });
    expectRejected(await outcome(session.query('SELECT 1')), /^query: no answer within 300 ms$/, 2000);
    expectRejected(await outcome(session.query('SELECT 2')), /^query: no answer within 300 ms$/, 500);
    await session.end();

    const other = await login(srv.port);
    expectRejected(await outcome(other.query('SELECT 1', { timeoutMs: 200 })), /^query: no answer within 200 ms$/, 2000);
    await other.end();
  });

  test('stopped mid TLS handshake (SSLRequest accepted, then silence): fails within the TLS timeout', async () => {
    const srv = await serve((s) => s.once('data', () => s.write('S')));
    const o = await outcome(login(srv.port, { ssl: {}, timeouts: { ...LONG, tlsMs: 300 } }));
    expectRejected(o, /^TLS handshake with 127\.0\.0\.1:\d+: not finished within 300 ms$/, 2000);
  });

  test('closed mid TLS handshake: fails at once', async () => {
    const srv = await serve((s) => s.once('data', () => s.write('S', () => s.once('data', () => s.destroy()))));
    const o = await outcome(login(srv.port, { ssl: {} }));
    expectRejected(o, /^TLS handshake with 127\.0\.0\.1:\d+ failed: /, 2000);
  });

  test('stopped mid SCRAM (SASL offered, then silence): fails within the authentication timeout', async () => {
    const srv = await serve((s) => s.once('data', () => s.write(SASL)));
    const o = await outcome(login(srv.port, { timeouts: { ...LONG, authMs: 300 } }));
    expectRejected(o, /^authentication as dbadmin: no answer within 300 ms$/, 2000);
  });

  test('closed mid SCRAM: fails at once', async () => {
    const srv = await serve((s) => s.once('data', () => s.write(SASL, () => s.once('data', () => s.end()))));
    const o = await outcome(login(srv.port));
    expectRejected(o, /^authentication as dbadmin: the server closed the connection$/, 2000);
  });

  test('the default timeouts fit the function: two Delete attempts that hang at every step end well within its 5 minutes', () => {
    const attempt = DEFAULT_TIMEOUTS.connectMs + DEFAULT_TIMEOUTS.tlsMs + DEFAULT_TIMEOUTS.authMs + DEFAULT_TIMEOUTS.queryMs;
    expect(2 * attempt + 15000).toBeLessThan(150000);
  });

  test('Delete against a server that never answers returns (with a warning naming the step) instead of hanging', async () => {
    const srv = await serve(() => undefined);
    const logs: string[] = [];
    const event = {
      RequestType: 'Delete',
      PhysicalResourceId: 'connectiontest@example_db',
      ResourceProperties: { SecretArn: 'arn:secret', Host: '127.0.0.1', Port: String(srv.port), DatabaseName: 'example_db', Username: 'connectiontest' },
    };
    const deps = {
      getSecret: async () => ({ username: 'dbadmin', password: 'secret-password' }),
      ssl: {},
      log: (m: string) => logs.push(m),
      retryDelayMs: 10,
      timeouts: { tlsMs: 200 },
    };
    const o = await outcome(provision.handle(event, deps));
    expect(o.state).toBe('resolved');
    expect(logs[logs.length - 1]).toMatch(/^WARNING: could not drop role connectiontest: TLS with 127\.0\.0\.1:\d+: no answer to SSLRequest within 200 ms/);
  });
});
