'use strict';
/**
 * The smallest PostgreSQL client the provisioning function needs, on Node's built-ins only
 * (so the function ships as two plain files, no bundler and no npm package): TLS via
 * SSLRequest, password authentication (SCRAM-SHA-256 with the server's signature checked,
 * MD5 and cleartext as the server asks), the simple query protocol, and errors carrying
 * PostgreSQL's SQLSTATE. No passwords or statements are ever written to an error message.
 *
 * Every step has a timeout (DEFAULT_TIMEOUTS, overridable per connection and per query), and a
 * connection that closes or fails rejects whatever is waiting on it at once, even with half a
 * message read: an error names the step (TLS, TLS handshake, authentication, query). A step
 * that hung would otherwise hold the custom resource until the function's own timeout, and on
 * Delete hold up the stack's deletion. After a timeout the connection is closed: where the
 * server is in the protocol is then unknown, so nothing more can be read from it safely.
 *
 * Protocol reference: PostgreSQL documentation, "Frontend/Backend Protocol" (message formats)
 * and RFC 5802/7677 (SCRAM-SHA-256).
 */
const crypto = require('crypto');
const net = require('net');
const tls = require('tls');

const PROTOCOL_3_0 = 196608;
const SSL_REQUEST_CODE = 80877103;

/**
 * Per-step limits in milliseconds: the TCP connect; SSLRequest and the TLS handshake together;
 * authentication up to ReadyForQuery; each query. Two attempts that hang at every step, as a
 * Delete makes, plus the pause between them, take about 2 minutes: well inside the function's
 * 5-minute timeout. The statements here take milliseconds on a healthy writer.
 */
const DEFAULT_TIMEOUTS = Object.freeze({ connectMs: 10000, tlsMs: 10000, authMs: 10000, queryMs: 30000 });

/** A failure with the server's SQLSTATE (`code`) when the server reported it. */
class PgError extends Error {
  constructor(message, code) {
    super(message);
    this.name = 'PgError';
    this.code = code;
  }
}

function int32(n) {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n);
  return b;
}

/** A typed frontend message: type byte, int32 length (itself included), body. */
function message(type, body) {
  return Buffer.concat([Buffer.from(type, 'ascii'), int32(body.length + 4), body]);
}

const cstr = (s) => Buffer.from(`${s}\0`, 'utf8');

/**
 * Reads whole backend messages off a socket; `next()` resolves with {type, body}. Once the
 * socket closes or fails (or a step times out), every waiter that cannot be given a whole
 * message is rejected at once, with the current step's name.
 */
class Reader {
  constructor(socket) {
    this.buf = Buffer.alloc(0);
    this.waiters = [];
    /** Why the connection is unusable (without the step), once it is. */
    this.failure = null;
    this.step = 'connection';
    this.attach(socket);
  }

  attach(socket) {
    this.socket = socket;
    socket.on('data', (d) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.drain();
    });
    socket.on('error', (e) => this.fail(`connection error: ${e.message}`));
    socket.on('close', () => this.fail('the server closed the connection'));
  }

  /** Marks the connection unusable, closes it, and rejects the waiters that cannot be served. */
  fail(reason) {
    if (!this.failure) this.failure = reason;
    this.socket.destroy();
    this.drain();
  }

  /** The error for a waiter the connection can no longer serve. */
  error() {
    const unread = this.buf.length > 0 ? ` (${this.buf.length} bytes of an unfinished message unread)` : '';
    return new PgError(`${this.step}: ${this.failure}${unread}`, undefined);
  }

  drain() {
    while (this.waiters.length > 0) {
      const len = this.buf.length >= 5 ? this.buf.readInt32BE(1) : -1;
      if (len >= 4 && this.buf.length >= len + 1) {
        const msg = { type: String.fromCharCode(this.buf[0]), body: this.buf.subarray(5, len + 1) };
        this.buf = this.buf.subarray(len + 1);
        this.waiters.shift().resolve(msg);
      } else if (this.failure) {
        this.waiters.shift().reject(this.error());
      } else if (len >= 0 && len < 4) {
        this.fail(`malformed message from the server (length ${len})`);
      } else {
        break;
      }
    }
  }

  next() {
    return new Promise((resolve, reject) => {
      this.waiters.push({ resolve, reject });
      this.drain();
    });
  }

  /**
   * Runs `fn` as step `step`: if it has not finished within `ms`, the connection is closed
   * and whatever `fn` waits for is rejected ("STEP: no answer within MS ms").
   */
  async within(step, ms, fn) {
    this.step = step;
    if (this.failure) throw this.error();
    const timer = setTimeout(() => this.fail(`no answer within ${ms} ms`), ms);
    try {
      return await fn();
    } finally {
      clearTimeout(timer);
    }
  }
}

/** ErrorResponse / NoticeResponse fields: S severity, C SQLSTATE, M message. */
function fields(body) {
  const out = {};
  let i = 0;
  while (i < body.length && body[i] !== 0) {
    const end = body.indexOf(0, i + 1);
    out[String.fromCharCode(body[i])] = body.toString('utf8', i + 1, end);
    i = end + 1;
  }
  return out;
}

function serverError(body) {
  const f = fields(body);
  return new PgError(`${f.S || 'ERROR'} ${f.C || ''}: ${f.M || 'unknown error'}`, f.C);
}

function connectSocket(host, port, timeoutMs) {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new PgError(`could not connect to ${host}:${port} within ${timeoutMs} ms (security groups? is the writer available?)`));
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      resolve(socket);
    });
    socket.once('error', (e) => {
      clearTimeout(timer);
      reject(new PgError(`could not connect to ${host}:${port}: ${e.message}`));
    });
  });
}

/**
 * SSLRequest, then a verified TLS handshake on the same socket, both within `timeoutMs`. A
 * close, an error or the time running out at any point rejects, naming where it stopped.
 */
function startTls(socket, host, port, ssl, timeoutMs) {
  const where = `${host}:${port}`;
  return new Promise((resolve, reject) => {
    let secure = null;
    let done = false;
    const finish = (err) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.off('data', onAnswer);
      socket.off('close', onClose);
      socket.off('error', onError);
      if (secure) {
        secure.off('secureConnect', onSecure);
        secure.off('error', onTlsError);
        secure.off('close', onTlsClose);
      }
      if (!err) {
        resolve(secure);
        return;
      }
      if (secure) secure.destroy();
      socket.destroy();
      reject(err);
    };
    const timer = setTimeout(
      () =>
        finish(
          new PgError(secure ? `TLS handshake with ${where}: not finished within ${timeoutMs} ms` : `TLS with ${where}: no answer to SSLRequest within ${timeoutMs} ms`),
        ),
      timeoutMs,
    );
    const onClose = () =>
      finish(new PgError(secure ? `TLS handshake with ${where} failed: the server closed the connection` : `TLS with ${where}: the server closed the connection before answering SSLRequest`));
    const onError = (e) => finish(new PgError(`TLS with ${where}: connection error: ${e.message}`));
    const onSecure = () => finish(null);
    const onTlsError = (e) => finish(new PgError(`TLS handshake with ${where} failed: ${e.message}`));
    const onTlsClose = () => finish(new PgError(`TLS handshake with ${where} failed: the server closed the connection`));
    const onAnswer = (d) => {
      socket.off('data', onAnswer);
      // Exactly one byte: anything after the 'S' would be read as if it came over TLS.
      if (d.length !== 1 || d[0] !== 0x53 /* S */) {
        finish(new PgError(`${host} refused TLS (SSLRequest answered ${JSON.stringify(d.toString('latin1', 0, 1))})`));
        return;
      }
      secure = tls.connect({ socket, host, servername: net.isIP(host) ? undefined : host, ca: ssl.ca, rejectUnauthorized: true });
      secure.on('secureConnect', onSecure);
      secure.on('error', onTlsError);
      secure.on('close', onTlsClose);
    };
    socket.on('data', onAnswer);
    socket.on('close', onClose);
    socket.on('error', onError);
    socket.write(Buffer.concat([int32(8), int32(SSL_REQUEST_CODE)]));
  });
}

const hmac = (key, data) => crypto.createHmac('sha256', key).update(data).digest();
const sha256 = (data) => crypto.createHash('sha256').update(data).digest();

/** SCRAM-SHA-256 (RFC 7677) without channel binding; checks the server's signature too. */
async function scram(socket, reader, password) {
  const clientNonce = crypto.randomBytes(18).toString('base64');
  const clientFirstBare = `n=,r=${clientNonce}`;
  const first = Buffer.from(`n,,${clientFirstBare}`, 'utf8');
  socket.write(message('p', Buffer.concat([cstr('SCRAM-SHA-256'), int32(first.length), first])));

  const cont = await reader.next();
  if (cont.type === 'E') throw serverError(cont.body);
  if (cont.type !== 'R' || cont.body.readInt32BE(0) !== 11) throw new PgError('unexpected message during SCRAM (expected SASLContinue)');
  const serverFirst = cont.body.subarray(4).toString('utf8');
  const attrs = Object.fromEntries(serverFirst.split(',').map((kv) => [kv[0], kv.slice(2)]));
  if (!attrs.r || !attrs.r.startsWith(clientNonce) || !attrs.s || !attrs.i) throw new PgError('malformed SCRAM server-first message');
  const salted = crypto.pbkdf2Sync(password.normalize('NFKC'), Buffer.from(attrs.s, 'base64'), Number(attrs.i), 32, 'sha256');
  const clientKey = hmac(salted, 'Client Key');
  const finalWithoutProof = `c=biws,r=${attrs.r}`;
  const authMessage = `${clientFirstBare},${serverFirst},${finalWithoutProof}`;
  const signature = hmac(sha256(clientKey), authMessage);
  const proof = Buffer.from(clientKey.map((b, i) => b ^ signature[i])).toString('base64');
  socket.write(message('p', Buffer.from(`${finalWithoutProof},p=${proof}`, 'utf8')));

  const fin = await reader.next();
  if (fin.type === 'E') throw serverError(fin.body);
  if (fin.type !== 'R' || fin.body.readInt32BE(0) !== 12) throw new PgError('unexpected message during SCRAM (expected SASLFinal)');
  const expected = hmac(hmac(salted, 'Server Key'), authMessage).toString('base64');
  if (fin.body.subarray(4).toString('utf8') !== `v=${expected}`) throw new PgError('the server failed SCRAM verification (wrong server?)');
}

/**
 * The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (the rolpassword format):
 * `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`. Handing the server this
 * instead of the password keeps the password itself out of the SQL text, and so out of any
 * statement log (log_statement, pg_stat_statements, error reports).
 */
function scramVerifier(password, iterations = 4096, salt = crypto.randomBytes(16)) {
  const salted = crypto.pbkdf2Sync(password.normalize('NFKC'), salt, iterations, 32, 'sha256');
  const storedKey = sha256(hmac(salted, 'Client Key')).toString('base64');
  const serverKey = hmac(salted, 'Server Key').toString('base64');
  return `SCRAM-SHA-256$${iterations}:${salt.toString('base64')}$${storedKey}:${serverKey}`;
}

/** DEFAULT_TIMEOUTS with the positive numbers of `overrides` in their place. */
function timeoutsWith(overrides) {
  const out = { ...DEFAULT_TIMEOUTS };
  for (const [k, v] of Object.entries(overrides || {})) {
    if (!(k in DEFAULT_TIMEOUTS)) throw new Error(`unknown timeout ${k}: expected one of ${Object.keys(DEFAULT_TIMEOUTS).join(', ')}`);
    if (v === undefined) continue;
    if (!(Number.isFinite(v) && v > 0)) throw new Error(`timeout ${k} must be a positive number of milliseconds, got ${JSON.stringify(v)}`);
    out[k] = v;
  }
  return out;
}

/**
 * Opens an authenticated session. `ssl`: false (local tests only) or {ca?}: TLS with the
 * certificate verified against `ca` or Node's trust store (NODE_EXTRA_CA_CERTS in Lambda).
 * `timeouts`: any of DEFAULT_TIMEOUTS' keys, to override it.
 */
async function connect({ host, port, user, password, database, ssl, timeouts }) {
  const t = timeoutsWith(timeouts);
  let socket = await connectSocket(host, port, t.connectMs);
  if (ssl) socket = await startTls(socket, host, port, ssl, t.tlsMs);
  const reader = new Reader(socket);
  const params = Buffer.concat([cstr('user'), cstr(user), cstr('database'), cstr(database), cstr('application_name'), cstr('connectiontest-provisioner'), Buffer.from([0])]);
  try {
    await reader.within(`authentication as ${user}`, t.authMs, () => {
      socket.write(Buffer.concat([int32(params.length + 8), int32(PROTOCOL_3_0), params]));
      return authenticate(socket, reader, user, password, ssl);
    });
  } catch (e) {
    socket.destroy();
    throw e;
  }
  return new Session(socket, reader, t.queryMs);
}

/** Answers the server's authentication requests until ReadyForQuery. */
async function authenticate(socket, reader, user, password, ssl) {
  for (;;) {
    const m = await reader.next();
    if (m.type === 'E') throw serverError(m.body);
    if (m.type === 'Z') return;
    if (m.type !== 'R') continue; // ParameterStatus, BackendKeyData, NoticeResponse
    const code = m.body.readInt32BE(0);
    if (code === 0) continue;
    if (password === undefined) throw new PgError(`the server asked for a password (auth request ${code}) and none was given`);
    if (code === 10) {
      const mechanisms = m.body.subarray(4).toString('utf8').split('\0');
      if (!mechanisms.includes('SCRAM-SHA-256')) throw new PgError(`no supported SASL mechanism in ${mechanisms.filter(Boolean).join(', ')}`);
      await scram(socket, reader, password);
    } else if (code === 5) {
      const inner = crypto.createHash('md5').update(password + user).digest('hex');
      const outer = crypto.createHash('md5').update(inner).update(m.body.subarray(4, 8)).digest('hex');
      socket.write(message('p', cstr(`md5${outer}`)));
    } else if (code === 3) {
      if (!ssl) throw new PgError('the server asked for a cleartext password over a connection without TLS: refused');
      socket.write(message('p', cstr(password)));
    } else {
      throw new PgError(`unsupported authentication request ${code}`);
    }
  }
}

class Session {
  constructor(socket, reader, queryMs) {
    this.socket = socket;
    this.reader = reader;
    this.queryMs = queryMs;
  }

  /**
   * Runs SQL with the simple query protocol (several statements run as one implicit
   * transaction) and returns the rows of the last result as arrays of text (null for NULL).
   * `timeoutMs` overrides the connection's query timeout for this query.
   */
  query(sql, { timeoutMs } = {}) {
    const ms = timeoutMs === undefined ? this.queryMs : timeoutsWith({ queryMs: timeoutMs }).queryMs;
    return this.reader.within('query', ms, () => this.run(sql));
  }

  async run(sql) {
    this.socket.write(message('Q', cstr(sql)));
    let rows = [];
    let error = null;
    for (;;) {
      const m = await this.reader.next();
      if (m.type === 'T') rows = [];
      else if (m.type === 'D') {
        const n = m.body.readInt16BE(0);
        const row = [];
        let i = 2;
        for (let c = 0; c < n; c++) {
          const len = m.body.readInt32BE(i);
          i += 4;
          if (len < 0) row.push(null);
          else {
            row.push(m.body.toString('utf8', i, i + len));
            i += len;
          }
        }
        rows.push(row);
      } else if (m.type === 'E') error = serverError(m.body);
      else if (m.type === 'Z') break;
    }
    if (error) throw error;
    return rows;
  }

  /** Terminate, then close; a server that does not close its side is cut off after 1 s. */
  async end() {
    if (this.reader.failure) {
      this.socket.destroy();
      return;
    }
    try {
      this.socket.end(message('X', Buffer.alloc(0)));
      const timer = setTimeout(() => this.socket.destroy(), 1000);
      timer.unref();
      this.socket.once('close', () => clearTimeout(timer));
    } catch {
      this.socket.destroy();
    }
  }
}

module.exports = { connect, scramVerifier, DEFAULT_TIMEOUTS, PgError };
