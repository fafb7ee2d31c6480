//! Pinning detection: which client statements would make RDS Proxy pin a session to its
//! database connection.
//!
//! RDS Proxy multiplexes client sessions over database connections between transactions,
//! except when a session changes state the proxy cannot carry over; then it *pins* the
//! session to one connection until the session ends, logs the reason, and counts the
//! session in the `DatabaseConnectionsCurrentlySessionPinned` metric. AWS's "Avoiding
//! pinning an RDS Proxy" lists the PostgreSQL conditions; the stand-in watches for these:
//!
//! | condition | detected as |
//! |---|---|
//! | `SET` commands | a statement starting with `SET` (not `SET LOCAL`, `SET TRANSACTION`, `SET CONSTRAINTS`, which last one transaction), or `RESET` (a setting back to its default changes the session too) |
//! | prepared statements | SQL `PREPARE`, `EXECUTE`, `DEALLOCATE` |
//! | temporary tables, sequences, views | `CREATE [GLOBAL/LOCAL] TEMP/TEMPORARY ...`, `SELECT ... INTO TEMP ...` |
//! | cursors | `DECLARE` |
//! | discarding session state | `DISCARD` |
//! | notification channels | `LISTEN` |
//! | loading a module | `LOAD` |
//! | sequence functions | calls of `nextval`, `setval` |
//! | advisory locks | calls of `pg_advisory_lock[_shared]`, `pg_try_advisory_lock[_shared]` |
//! | `set_config` | calls of `set_config` |
//! | statements over 16 KB | a `Query` or `Parse` message whose body exceeds 16384 bytes |
//!
//! Statements arrive in simple-query (`Q`) and extended-protocol `Parse` (`P`) messages; the
//! text is tokenized (comments, string and dollar-quoted literals and quoted identifiers
//! are skipped), so `SELECT 'SET x'` is not a SET. Protocol-level named prepared statements
//! (what most drivers send for every parameterised query) are not counted: the AWS page
//! names the SQL commands.
//!
//! ```
//! use rds_proxy_emulator::pinning::{pinning_reason, PinReason};
//!
//! assert_eq!(pinning_reason("SET search_path TO app"), Some(PinReason::Set));
//! assert_eq!(pinning_reason("SELECT pg_advisory_lock(42)"), Some(PinReason::AdvisoryLock));
//! assert_eq!(pinning_reason("SELECT 'SET x' /* LISTEN */ FROM t"), None);
//! ```

/// Largest statement RDS Proxy can multiplex (bytes).
pub const MAX_UNPINNED_STATEMENT: usize = 16 * 1024;

/// Why a session was pinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinReason {
    /// A `SET` command.
    Set,
    /// A `RESET` command (a setting back to its default: session state all the same).
    Reset,
    /// SQL `PREPARE`.
    Prepare,
    /// SQL `EXECUTE`.
    Execute,
    /// SQL `DEALLOCATE`.
    Deallocate,
    /// A temporary table, sequence or view.
    TemporaryObject,
    /// `DECLARE ... CURSOR`.
    Cursor,
    /// `DISCARD`.
    Discard,
    /// `LISTEN`.
    Listen,
    /// `LOAD`.
    Load,
    /// `nextval` / `setval`.
    SequenceFunction,
    /// A session-level advisory lock.
    AdvisoryLock,
    /// `set_config`.
    SetConfig,
    /// A statement over 16 KB.
    LargeStatement,
}

impl PinReason {
    /// A short description, as logged.
    pub fn describe(self) -> &'static str {
        match self {
            PinReason::Set => "SQL changed session settings (SET)",
            PinReason::Reset => "SQL changed session settings (RESET)",
            PinReason::Prepare => "SQL prepared a statement (PREPARE)",
            PinReason::Execute => "SQL executed a prepared statement (EXECUTE)",
            PinReason::Deallocate => "SQL deallocated a prepared statement (DEALLOCATE)",
            PinReason::TemporaryObject => "SQL created a temporary table, sequence or view",
            PinReason::Cursor => "SQL declared a cursor (DECLARE)",
            PinReason::Discard => "SQL discarded session state (DISCARD)",
            PinReason::Listen => "SQL listens on a notification channel (LISTEN)",
            PinReason::Load => "SQL loaded a module (LOAD)",
            PinReason::SequenceFunction => "SQL used a sequence function (nextval/setval)",
            PinReason::AdvisoryLock => "SQL took a session-level advisory lock",
            PinReason::SetConfig => "SQL changed session settings (set_config)",
            PinReason::LargeStatement => "a statement was larger than 16 KB",
        }
    }
}

impl std::fmt::Display for PinReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

/// Longest word kept for keyword matching (longer identifiers are no keyword we need).
const WORD: usize = 28;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    /// A keyword or unquoted ASCII identifier of at most [`WORD`] bytes, lower-cased
    /// (no allocation: this runs on every statement of an unpinned session).
    Word([u8; WORD], u8),
    /// A longer or non-ASCII identifier.
    LongWord,
    /// A quoted identifier (never a keyword).
    Quoted,
    /// A string, number, parameter or operator.
    Other,
    OpenParen,
    Semicolon,
}

/// Tokenizes SQL text (PostgreSQL lexical rules, enough to find keywords and calls).
fn tokenize(sql: &[u8], out: &mut Vec<Token>) {
    let mut i = 0;
    let n = sql.len();
    while i < n {
        let c = sql[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => i += 1,
            b'-' if sql.get(i + 1) == Some(&b'-') => {
                while i < n && sql[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if sql.get(i + 1) == Some(&b'*') => {
                // Nested block comments.
                let mut depth = 0usize;
                while i < n {
                    if sql[i] == b'/' && sql.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if sql[i] == b'*' && sql.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'\'' => {
                i = skip_quoted(sql, i, b'\'', false);
                out.push(Token::Other);
            }
            b'"' => {
                i = skip_quoted(sql, i, b'"', false);
                out.push(Token::Quoted);
            }
            b'$' => {
                // $1 parameter, or $tag$ ... $tag$ literal.
                let tag_end = sql[i + 1..]
                    .iter()
                    .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
                    .map(|p| i + 1 + p);
                match tag_end {
                    Some(e)
                        if sql[e] == b'$'
                            && !matches!(sql.get(i + 1), Some(b) if b.is_ascii_digit()) =>
                    {
                        let tag = &sql[i..=e];
                        let body = e + 1;
                        i = find(&sql[body..], tag)
                            .map(|p| body + p + tag.len())
                            .unwrap_or(n);
                    }
                    _ => {
                        i += 1;
                        while i < n && sql[i].is_ascii_digit() {
                            i += 1;
                        }
                    }
                }
                out.push(Token::Other);
            }
            b'(' => {
                out.push(Token::OpenParen);
                i += 1;
            }
            b';' => {
                out.push(Token::Semicolon);
                i += 1;
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                let start = i;
                while i < n
                    && (sql[i].is_ascii_alphanumeric()
                        || sql[i] == b'_'
                        || sql[i] == b'$'
                        || sql[i] >= 0x80)
                {
                    i += 1;
                }
                let word = &sql[start..i];
                // E'...' strings take backslash escapes; U&'...' and B'...'/X'...' do not
                // need special handling beyond the quote.
                if i < n && sql[i] == b'\'' {
                    let escapes = word.eq_ignore_ascii_case(b"e");
                    let prefix = escapes
                        || word.eq_ignore_ascii_case(b"b")
                        || word.eq_ignore_ascii_case(b"x")
                        || word.eq_ignore_ascii_case(b"n")
                        || word.eq_ignore_ascii_case(b"u&");
                    if prefix {
                        i = skip_quoted(sql, i, b'\'', escapes);
                        out.push(Token::Other);
                        continue;
                    }
                }
                if word.len() <= WORD && word.is_ascii() {
                    let mut lower = [0u8; WORD];
                    for (d, s) in lower.iter_mut().zip(word) {
                        *d = s.to_ascii_lowercase();
                    }
                    out.push(Token::Word(lower, word.len() as u8));
                } else {
                    out.push(Token::LongWord);
                }
            }
            _ => {
                out.push(Token::Other);
                i += 1;
            }
        }
    }
}

/// Index just past the closing `quote` of a literal starting at `start` (doubled quotes
/// escape it; with `backslash`, `\x` escapes too). Unterminated: the end of the text.
fn skip_quoted(sql: &[u8], start: usize, quote: u8, backslash: bool) -> usize {
    let mut i = start + 1;
    while i < sql.len() {
        let c = sql[i];
        if backslash && c == b'\\' {
            i += 2;
            continue;
        }
        if c == quote {
            if sql.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    sql.len()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > haystack.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn word(t: Option<&Token>) -> Option<&str> {
    match t {
        Some(Token::Word(w, len)) => std::str::from_utf8(&w[..usize::from(*len)]).ok(),
        _ => None,
    }
}

fn statement_reason(stmt: &[Token]) -> Option<PinReason> {
    let first = word(stmt.first());
    let second = word(stmt.get(1));
    let reason = match first {
        Some("set") if !matches!(second, Some("local" | "transaction" | "constraints")) => {
            Some(PinReason::Set)
        }
        Some("reset") => Some(PinReason::Reset),
        Some("prepare") if second != Some("transaction") => Some(PinReason::Prepare),
        Some("execute") => Some(PinReason::Execute),
        Some("deallocate") => Some(PinReason::Deallocate),
        Some("discard") => Some(PinReason::Discard),
        Some("listen") => Some(PinReason::Listen),
        Some("load") => Some(PinReason::Load),
        Some("declare") => Some(PinReason::Cursor),
        Some("create") => {
            // CREATE [OR REPLACE] [GLOBAL|LOCAL] {TEMP|TEMPORARY} [UNLOGGED] {TABLE|SEQUENCE|VIEW}
            let head = stmt.iter().skip(1).take(5).filter_map(|t| word(Some(t)));
            let mut temporary = false;
            for w in head {
                match w {
                    "temp" | "temporary" => temporary = true,
                    "or" | "replace" | "global" | "local" | "unlogged" | "recursive" => {}
                    _ => break,
                }
            }
            temporary.then_some(PinReason::TemporaryObject)
        }
        Some("select") => stmt
            .windows(2)
            .any(|w| {
                word(Some(&w[0])) == Some("into")
                    && matches!(word(Some(&w[1])), Some("temp" | "temporary"))
            })
            .then_some(PinReason::TemporaryObject),
        _ => None,
    };
    if reason.is_some() {
        return reason;
    }
    // Function calls anywhere in the statement.
    stmt.windows(2).find_map(|w| {
        if w[1] != Token::OpenParen {
            return None;
        }
        match word(Some(&w[0]))? {
            "set_config" => Some(PinReason::SetConfig),
            "nextval" | "setval" => Some(PinReason::SequenceFunction),
            "pg_advisory_lock"
            | "pg_advisory_lock_shared"
            | "pg_try_advisory_lock"
            | "pg_try_advisory_lock_shared" => Some(PinReason::AdvisoryLock),
            _ => None,
        }
    })
}

/// The first pinning condition in SQL text (one or more statements), if any.
pub fn pinning_reason(sql: &str) -> Option<PinReason> {
    pinning_reason_bytes(sql.as_bytes())
}

/// [`pinning_reason`] on raw bytes (need not be UTF-8).
pub fn pinning_reason_bytes(sql: &[u8]) -> Option<PinReason> {
    if sql.len() > MAX_UNPINNED_STATEMENT {
        return Some(PinReason::LargeStatement);
    }
    thread_local! {
        // Reused: this runs on every statement of every unpinned session.
        static TOKENS: std::cell::RefCell<Vec<Token>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let reason = |toks: &[Token]| {
        toks.split(|t| *t == Token::Semicolon)
            .find_map(statement_reason)
    };
    TOKENS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut toks) => {
            toks.clear();
            tokenize(sql, &mut toks);
            let r = reason(&toks);
            if toks.capacity() > 4096 {
                *toks = Vec::new();
            }
            r
        }
        Err(_) => {
            let mut toks = Vec::new();
            tokenize(sql, &mut toks);
            reason(&toks)
        }
    })
}

/// Watches the client-to-database byte stream of one session (after login) for the first
/// pinning condition. Bytes are passed in as they arrive, split anywhere; only the
/// 5-byte headers of messages are read, plus the text of `Query` and `Parse` messages.
#[derive(Debug, Default)]
pub struct PinWatch {
    header: [u8; 5],
    header_len: usize,
    /// Body bytes of the current message still to come.
    remaining: usize,
    in_body: bool,
    /// Collecting the body of a Q/P message.
    collecting: Option<u8>,
    text: Vec<u8>,
    done: bool,
}

impl PinWatch {
    /// A watcher at a message boundary.
    pub fn new() -> PinWatch {
        PinWatch::default()
    }

    /// Whether the watcher has stopped (a condition was found, or the stream was not
    /// PostgreSQL messages): further bytes need not be fed.
    pub fn done(&self) -> bool {
        self.done
    }

    /// Feeds the next bytes of the stream; returns the first pinning condition met.
    pub fn feed(&mut self, mut data: &[u8]) -> Option<PinReason> {
        while !data.is_empty() && !self.done {
            if !self.in_body {
                let take = (5 - self.header_len).min(data.len());
                self.header[self.header_len..self.header_len + take].copy_from_slice(&data[..take]);
                self.header_len += take;
                data = &data[take..];
                if self.header_len < 5 {
                    break;
                }
                self.header_len = 0;
                let tag = self.header[0];
                let len = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]) as usize;
                let Some(body) = len.checked_sub(4) else {
                    // Not a PostgreSQL message: stop watching (the server will refuse it).
                    self.done = true;
                    return None;
                };
                self.collecting = None;
                if tag == b'Q' || tag == b'P' {
                    if body > MAX_UNPINNED_STATEMENT {
                        self.text.clear();
                        self.done = true;
                        return Some(PinReason::LargeStatement);
                    }
                    self.collecting = Some(tag);
                    self.text.clear();
                }
                self.remaining = body;
                self.in_body = true;
            }
            let take = self.remaining.min(data.len());
            if self.collecting.is_some() {
                self.text.extend_from_slice(&data[..take]);
            }
            self.remaining -= take;
            data = &data[take..];
            if self.remaining == 0 {
                self.in_body = false;
                if let Some(tag) = self.collecting.take() {
                    let sql = statement_text(tag, &self.text);
                    if let Some(reason) = pinning_reason_bytes(sql) {
                        self.done = true;
                        return Some(reason);
                    }
                }
            }
        }
        None
    }

    /// The SQL text of the last Query/Parse message seen (for the log's digest).
    pub fn last_statement(&self) -> &[u8] {
        statement_text(b'Q', &self.text)
    }
}

/// The statement text of a Query (`text\0`) or Parse (`name\0text\0...`) body.
pub fn statement_text(tag: u8, body: &[u8]) -> &[u8] {
    let body = if tag == b'P' {
        match body.iter().position(|b| *b == 0) {
            Some(p) => &body[p + 1..],
            None => body,
        }
    } else {
        body
    };
    match body.iter().position(|b| *b == 0) {
        Some(p) => &body[..p],
        None => body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions() {
        let pinned = [
            ("SET search_path TO app", PinReason::Set),
            ("set session statement_timeout = 5", PinReason::Set),
            ("RESET search_path", PinReason::Reset),
            (
                "BEGIN; SET default_transaction_read_only = off; CREATE TABLE t (a int)",
                PinReason::Set,
            ),
            ("PREPARE q(int) AS SELECT $1", PinReason::Prepare),
            ("EXECUTE q(1)", PinReason::Execute),
            ("DEALLOCATE q", PinReason::Deallocate),
            ("CREATE TEMP TABLE t (a int)", PinReason::TemporaryObject),
            (
                "create global temporary table t (a int)",
                PinReason::TemporaryObject,
            ),
            ("CREATE TEMPORARY SEQUENCE s", PinReason::TemporaryObject),
            (
                "CREATE OR REPLACE TEMP VIEW v AS SELECT 1",
                PinReason::TemporaryObject,
            ),
            (
                "SELECT * INTO TEMP t FROM customers",
                PinReason::TemporaryObject,
            ),
            ("DECLARE c CURSOR FOR SELECT 1", PinReason::Cursor),
            ("DISCARD ALL", PinReason::Discard),
            ("LISTEN orders", PinReason::Listen),
            ("LOAD 'auto_explain'", PinReason::Load),
            ("SELECT nextval('s')", PinReason::SequenceFunction),
            (
                "SELECT pg_catalog.set_config('a.b', 'c', false)",
                PinReason::SetConfig,
            ),
            ("SELECT pg_try_advisory_lock(1)", PinReason::AdvisoryLock),
            (
                "select 1; select pg_advisory_lock_shared (7)",
                PinReason::AdvisoryLock,
            ),
        ];
        for (sql, want) in pinned {
            assert_eq!(pinning_reason(sql), Some(want), "{sql}");
        }
        let plain = [
            "SELECT name FROM customers ORDER BY id",
            "INSERT INTO orders VALUES (1, 2, 3, 4)",
            "BEGIN; SET LOCAL statement_timeout = 5; COMMIT",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SELECT 'SET x', \"listen\" FROM t -- LISTEN x",
            "SELECT /* nested /* LISTEN */ DISCARD */ 1",
            "SELECT $$ SET x $$, $tag$ LISTEN $tag$, $1",
            "SELECT E'it\\'s; LISTEN x'",
            "CREATE TABLE t (a int)",
            "SELECT pg_advisory_xact_lock(1)",
            "SELECT my_nextval_wrapper(1)",
            "PREPARE TRANSACTION 'x'",
            "",
        ];
        for sql in plain {
            assert_eq!(pinning_reason(sql), None, "{sql}");
        }
        assert_eq!(
            pinning_reason(&format!("SELECT '{}'", "x".repeat(MAX_UNPINNED_STATEMENT))),
            Some(PinReason::LargeStatement)
        );
    }

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn watch_finds_conditions_across_any_split() {
        let mut stream = message(b'Q', b"SELECT 1\0");
        stream.extend(message(b'P', b"s1\0SELECT $1\0\0\0"));
        stream.extend(message(b'B', b"\0s1\0\0\0\0\0\0\0"));
        stream.extend(message(b'S', b""));
        stream.extend(message(b'P', b"\0LISTEN jobs\0\0\0"));
        stream.extend(message(b'Q', b"SELECT 2\0"));
        for chunk in 1..=stream.len() {
            let mut w = PinWatch::new();
            let mut found = None;
            for part in stream.chunks(chunk) {
                if let Some(r) = w.feed(part) {
                    found = Some(r);
                    break;
                }
            }
            assert_eq!(found, Some(PinReason::Listen), "chunk {chunk}");
            assert!(w.done());
        }
        let mut w = PinWatch::new();
        assert_eq!(w.feed(&message(b'Q', b"SELECT 1\0")), None);
        assert_eq!(w.last_statement(), b"SELECT 1");
        let mut big = vec![b'Q'];
        big.extend_from_slice(&((MAX_UNPINNED_STATEMENT + 10) as u32).to_be_bytes());
        assert_eq!(w.feed(&big), Some(PinReason::LargeStatement));
    }
}
