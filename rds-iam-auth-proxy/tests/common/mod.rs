//! The proxy binary run against the local stack, as a user runs it: the stack's
//! environment (the variables the Lambda reads), flags, and its log on stderr.
#![allow(dead_code)] // each test file uses a part

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rds_proxy_emulator::{LocalStack, StackConfig};

pub async fn stack() -> LocalStack {
    LocalStack::start(StackConfig::demo())
        .await
        .expect("local stack starts")
}

/// The proxy's environment for the stack's READ_WRITE endpoint (the writer) instead of the
/// application's READ_ONLY one: a hot standby behind that one takes no writes, not even to a
/// temporary table. Pass it as `Proxy::start`'s `env`, through [`env_refs`].
pub fn read_write_env(stack: &LocalStack) -> Vec<(&'static str, String)> {
    let rw = stack.endpoint("READ_WRITE").expect("a READ_WRITE endpoint");
    vec![
        ("RDS_PROXY_APPLICATION_ENDPOINT", rw.hostname.clone()),
        ("DB_PORT", rw.port.to_string()),
        ("DB_CONNECT_HOST", rw.listen.to_string()),
    ]
}

/// `(name, value)` pairs as the `&str` pairs `Proxy::start` takes.
pub fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// A running `rds-iam-auth-proxy`.
pub struct Proxy {
    pub child: Child,
    /// Every stderr line so far.
    pub log: Arc<Mutex<Vec<String>>>,
    lines: mpsc::Receiver<String>,
    /// The listeners, as logged: `127.0.0.1:PORT` or a socket path.
    pub listening: Vec<String>,
}

impl Proxy {
    /// Starts the proxy with the stack's environment plus `env`, and `args`; waits until it
    /// says it is ready (or panics with its log).
    pub fn start(stack: &LocalStack, args: &[&str], env: &[(&str, &str)]) -> Proxy {
        let mut proxy = Proxy::spawn(stack, args, env);
        proxy.wait_for("ready for new connections", Duration::from_secs(60));
        let listening = proxy
            .log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| {
                let rest = l.split("listening on ").nth(1)?;
                Some(rest.split(' ').next()?.to_owned())
            })
            .collect();
        proxy.listening = listening;
        proxy
    }

    /// Starts the proxy without waiting for anything.
    pub fn spawn(stack: &LocalStack, args: &[&str], env: &[(&str, &str)]) -> Proxy {
        let mut command = Command::new(env!("CARGO_BIN_EXE_rds-iam-auth-proxy"));
        command
            .args(args)
            .envs(stack.env())
            .env("DB_CONNECT_TIMEOUT_SECONDS", "5")
            .env("RUST_LOG", "info")
            .env_remove("RUST_LOG_STYLE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("proxy binary starts");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = mpsc::channel();
        let shared = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                shared.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        Proxy {
            child,
            log,
            lines,
            listening: Vec::new(),
        }
    }

    /// Waits for a log line containing `needle`; panics with the log after `limit`.
    pub fn wait_for(&mut self, needle: &str, limit: Duration) -> String {
        let until = Instant::now() + limit;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("no log line with {needle:?}; log:\n{}", self.log_text()),
            }
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The TCP port of the first TCP listener.
    pub fn port(&self) -> u16 {
        self.listening
            .iter()
            .find_map(|l| l.rsplit_once(':')?.1.parse().ok())
            .expect("a TCP listener")
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the exit (panics after `limit`).
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let until = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < until,
                "still running; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// libpq's connection string for the stack's database user and database through a proxy
/// listener on 127.0.0.1:`port`, with no password.
pub fn conninfo(stack: &LocalStack, port: u16) -> String {
    format!(
        "host=127.0.0.1 port={port} user={} dbname={}",
        stack.db_user(),
        stack.db_name()
    )
}

/// `psql` with a connection string, `-c sql`: (success, stdout, stderr). No password
/// anywhere: not in the environment, not in a file.
pub fn psql(conninfo: &str, sql: &str) -> (bool, String, String) {
    let out = Command::new("psql")
        .args([
            conninfo,
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .env_remove("PGPASSWORD")
        .env("PGPASSFILE", "/nonexistent")
        .env("PGCONNECT_TIMEOUT", "20")
        .output()
        .expect("psql runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    )
}
