//! The real `connection-test` binary under `cargo lambda watch`, invoked with
//! `cargo lambda invoke`, as `make demo` does it: against a local stack started here
//! (real PostgreSQL behind the STS / RDS Proxy stand-ins), with the stack's environment.
//!
//! 1. The right settings: the exact success JSON of the Lambda contract (ARCHITECTURE.md).
//! 2. A wrong `EXTERNAL_ID` (separate watch): a function error naming `AssumeRoleFailed`.
//!
//! cargo-lambda is taken from PATH or from `<repo>/.venv/bin` (where `make lambda-tools`
//! installs it). Without it the test fails, saying so: it is never skipped silently.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rds_proxy_emulator::{LocalStack, StackConfig};

/// Compiling the function is done by `cargo lambda watch` itself on the first invocation
/// (usually a no-op: the test harness has built the binary already).
const FIRST_INVOKE_TIMEOUT: Duration = Duration::from_secs(600);
const WATCH_READY_TIMEOUT: Duration = Duration::from_secs(60);

const SUCCESS: &str = r#"{"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": "Database connection was successful!"}"#;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("connection-test lives in the workspace")
        .to_path_buf()
}

/// The directory holding `cargo-lambda`: PATH first, then `<repo>/.venv/bin`.
fn cargo_lambda_dir() -> PathBuf {
    let venv = workspace_root().join(".venv/bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(std::iter::once(venv))
        .find(|dir| dir.join("cargo-lambda").is_file())
        .unwrap_or_else(|| {
            panic!(
                "cargo-lambda not found on PATH nor in {}/.venv/bin: `make lambda-tools` installs it \
                 (pip install cargo-lambda into the project's .venv)",
                workspace_root().display()
            )
        })
}

/// PATH with cargo-lambda's directory (and zig, next to it in the venv) first.
fn path_with(dir: &Path) -> std::ffi::OsString {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::join_paths(std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(&path)))
        .expect("PATH entries are joinable")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Variables the test harness sets for this crate that must not leak into the `cargo`
/// that `cargo lambda watch` runs (they describe this test, not the function).
fn scrub(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_BIN_")
            || key.starts_with("CARGO_MANIFEST_")
            || key.starts_with("NEXTEST")
            || matches!(
                key.as_str(),
                "CARGO_CRATE_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "CARGO_RUSTC_CURRENT_DIR"
                    | "RUST_TEST_THREADS"
            )
        {
            cmd.env_remove(key);
        }
    }
}

/// `cargo lambda watch` in its own process group on 127.0.0.1; the group is stopped on drop.
struct Watch {
    child: Child,
    port: u16,
    log: PathBuf,
    tools: PathBuf,
}

impl Watch {
    fn start(tools: &Path, name: &str, env: &[(String, String)]) -> Watch {
        use std::os::unix::process::CommandExt;
        let port = free_port();
        let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("watch-{name}.log"));
        let out = std::fs::File::create(&log).expect("watch log file");
        let err = out.try_clone().expect("watch log file");
        let mut cmd = Command::new("cargo");
        scrub(&mut cmd);
        cmd.current_dir(workspace_root())
            .env("PATH", path_with(tools))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args(["lambda", "watch", "--ignore-changes", "--quiet"])
            .args(["-p", "connection-test", "--bin", "connection-test"])
            .args(["--invoke-address", "127.0.0.1", "--invoke-port"])
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = cmd.spawn().expect("spawn cargo lambda watch");
        let mut watch = Watch {
            child,
            port,
            log,
            tools: tools.to_path_buf(),
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + WATCH_READY_TIMEOUT;
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return watch;
            }
            if let Ok(Some(status)) = watch.child.try_wait() {
                panic!(
                    "cargo lambda watch exited ({status}):\n{}",
                    watch.log_tail()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "cargo lambda watch not listening on {addr} after {WATCH_READY_TIMEOUT:?}:\n{}",
                    watch.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// `cargo lambda invoke connection-test --data-ascii '{}'`: (success, stdout, stderr).
    fn invoke(&self) -> (bool, String, String) {
        let mut child = Command::new("cargo")
            .env("PATH", path_with(&self.tools))
            .args(["lambda", "invoke", "connection-test", "--data-ascii", "{}"])
            .args(["--invoke-address", "127.0.0.1", "--invoke-port"])
            .arg(self.port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cargo lambda invoke");
        let reader = |mut r: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = r.read_to_string(&mut s);
                s
            })
        };
        let out = reader(Box::new(child.stdout.take().expect("stdout")));
        let err = reader(Box::new(child.stderr.take().expect("stderr")));
        let deadline = Instant::now() + FIRST_INVOKE_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for cargo lambda invoke") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "cargo lambda invoke did not answer within {FIRST_INVOKE_TIMEOUT:?}; watch log:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let out = out.join().expect("stdout reader");
        let err = err.join().expect("stderr reader");
        (status.success(), out, err)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let signal = |sig: &str| {
            let _ = Command::new("kill")
                .args([sig, "--", &group])
                .stderr(Stdio::null())
                .status();
        };
        signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Whatever is left of the group (the function process included).
        signal("-KILL");
        let _ = self.child.wait();
    }
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

#[test]
fn real_binary_under_cargo_lambda_watch() {
    let tools = cargo_lambda_dir();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let stack = runtime
        .block_on(LocalStack::start(StackConfig::demo()))
        .expect("local stack (PostgreSQL + STS / RDS Proxy stand-ins)");
    let env = stack.env();

    // 1. The stack's own settings: the exact success answer.
    {
        let watch = Watch::start(&tools, "ok", &env);
        let started = Instant::now();
        let (ok, out, err) = watch.invoke();
        assert!(
            ok,
            "invoke failed after {:?}\nstdout: {out}\nstderr: {err}\nwatch log:\n{}",
            started.elapsed(),
            watch.log_tail()
        );
        assert_eq!(
            json(&out),
            json(SUCCESS),
            "stdout: {out}\nwatch log:\n{}",
            watch.log_tail()
        );
    }

    // 2. A wrong external ID: the trust policy refuses AssumeRole; the function error names it.
    {
        let mut bad = env.clone();
        for (k, v) in &mut bad {
            if k == "EXTERNAL_ID" {
                *v = "not-the-external-id".to_owned();
            }
        }
        let watch = Watch::start(&tools, "bad-external-id", &bad);
        let (ok, out, err) = watch.invoke();
        assert!(
            !ok,
            "a wrong EXTERNAL_ID must fail the invocation; got: {out}"
        );
        let all = format!("{out}\n{err}");
        assert!(
            all.contains("AssumeRoleFailed"),
            "the error must name AssumeRoleFailed\nstdout: {out}\nstderr: {err}\nwatch log:\n{}",
            watch.log_tail()
        );
    }
    drop(stack);
}
