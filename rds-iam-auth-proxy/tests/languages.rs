//! Programs in other languages, through the proxy with no password, each with its own
//! PostgreSQL driver: Python (psycopg 3 on libpq, its default sslmode=prefer), Node.js
//! (node-postgres with `ssl: false`) and Java (the PostgreSQL JDBC driver, its default
//! sslmode=prefer). Each client (tests/clients/) runs as a subprocess against the local
//! stack: `SELECT current_user`, a query with a bound parameter, a transaction with a
//! temporary table; it prints one JSON line, checked here.
//!
//! `make proxy-clients` installs the drivers (and `make test` runs it first). A missing
//! interpreter or driver fails the test with the command that installs it: a skipped test
//! would pass unnoticed on a machine that never ran one.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::Proxy;
use rds_proxy_emulator::LocalStack;
use serde_json::{json, Value};

/// How long one client may take, JVM start and source compilation included.
const CLIENT_LIMIT: Duration = Duration::from_secs(120);

const INSTALL: &str =
    "run `make proxy-clients` (it installs every client the proxy is tested with)";

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// The project's virtualenv (the Makefile's VENV), where make installs psycopg.
fn venv_python() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .unwrap_or(manifest)
        .join(".venv/bin/python")
}

/// The PostgreSQL JDBC driver: PGJDBC_JAR, else where Debian's libpostgresql-jdbc-java puts it.
fn jdbc_jar() -> PathBuf {
    std::env::var_os("PGJDBC_JAR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/share/java/postgresql.jar"))
}

/// Panics with `missing` and the install hint unless `command` runs and succeeds.
fn require(command: &mut Command, missing: &str) {
    let ok = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "{missing}: {INSTALL}");
}

/// A client command, with an environment that can supply no password: every PG* variable
/// removed (PGPASSWORD, PGSERVICE, PGSSLMODE...) and libpq's password file pointed nowhere.
fn client_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PG") {
            command.env_remove(name);
        }
    }
    command
        .env("PGPASSFILE", "/nonexistent")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Runs a client against the proxy and returns its JSON line; panics with its output and
/// the proxy's log if it fails.
fn run_client(name: &str, mut command: Command, stack: &LocalStack, proxy: &Proxy) -> Value {
    command.args([
        "127.0.0.1",
        &proxy.port().to_string(),
        stack.db_user(),
        stack.db_name(),
    ]);
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("{name}: cannot start {command:?}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(CLIENT_LIMIT) {
        Ok(out) => out.unwrap_or_else(|e| panic!("{name}: {e}")),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!(
                "{name}: no answer in {CLIENT_LIMIT:?}; proxy log:\n{}",
                proxy.log_text()
            );
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{name} failed ({}):\n{stdout}\n{stderr}\nproxy log:\n{}",
        out.status,
        proxy.log_text()
    );
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("{name} printed no JSON line ({e}):\n{stdout}\n{stderr}"))
}

/// What every client must have read: its user, 41 + 1 from a bound parameter, and the rows
/// it inserted within its transaction.
fn assert_answers(name: &str, answers: &Value, stack: &LocalStack) {
    assert_eq!(
        answers["current_user"],
        stack.db_user(),
        "{name}: {answers}"
    );
    assert_eq!(answers["plus_one"], 42, "{name}: {answers}");
    assert_eq!(
        answers["rows"],
        json!([[1, "alpha"], [2, "beta"]]),
        "{name}: {answers}"
    );
    println!("{name}: {answers}");
}

/// The proxy in front of the writer: the clients create a temporary table.
fn writer_proxy(stack: &LocalStack) -> Proxy {
    let env = common::read_write_env(stack);
    Proxy::start(stack, &["--port", "0"], &common::env_refs(&env))
}

#[tokio::test]
async fn python_psycopg_with_libpq_defaults() {
    let python = venv_python();
    require(
        Command::new(&python).args(["-c", "import psycopg; psycopg.pq.version()"]),
        &format!("psycopg 3 is not installed in {}", python.display()),
    );
    let stack = common::stack().await;
    let proxy = writer_proxy(&stack);
    let mut command = client_command(&python);
    command.arg(clients_dir().join("client.py"));
    let answers = run_client("psycopg", command, &stack, &proxy);
    assert_answers("psycopg", &answers, &stack);
    // libpq's default asks for TLS first; the proxy's N lets the session go on in the clear.
    assert_eq!(answers["sslmode"], "prefer", "{answers}");
    assert_eq!(answers["ssl"], false, "{answers}");
}

#[tokio::test]
async fn node_postgres_without_tls() {
    let node_dir = clients_dir().join("node");
    require(
        Command::new("node").arg("--version"),
        "node is not on PATH (Node.js 16+: apt-get install nodejs npm)",
    );
    assert!(
        node_dir.join("node_modules/pg/package.json").exists(),
        "node-postgres is not installed in {}: {INSTALL}",
        node_dir.display()
    );
    let stack = common::stack().await;
    let proxy = writer_proxy(&stack);
    let mut command = client_command("node");
    command.arg(node_dir.join("client.js"));
    let answers = run_client("node-postgres", command, &stack, &proxy);
    assert_answers("node-postgres", &answers, &stack);
    assert_eq!(answers["ssl"], false, "{answers}");
}

#[tokio::test]
async fn java_jdbc_with_driver_defaults() {
    let jar = jdbc_jar();
    // The single-file source launcher (`java Client.java`) came with Java 11.
    require(
        Command::new("java").args(["--source", "11", "--version"]),
        "no Java 11+ on PATH (java Client.java runs the client without javac)",
    );
    assert!(
        jar.exists(),
        "the PostgreSQL JDBC driver is not at {} (set PGJDBC_JAR to use another): {INSTALL}",
        jar.display()
    );
    let stack = common::stack().await;
    let proxy = writer_proxy(&stack);
    let mut command = client_command("java");
    command
        // A small client: no need for the JIT's later tiers, and a quicker start.
        .args(["-XX:TieredStopAtLevel=1", "-Xshare:auto", "-cp"])
        .arg(&jar)
        .arg(clients_dir().join("java/Client.java"));
    let answers = run_client("jdbc", command, &stack, &proxy);
    assert_answers("jdbc", &answers, &stack);
}
