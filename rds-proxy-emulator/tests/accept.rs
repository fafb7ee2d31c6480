//! The listeners' accept loops when accepting fails for a while (out of file descriptors:
//! EMFILE): they wait between attempts instead of spinning on the error, and serve again
//! once descriptors are free.
//!
//! The process's descriptor limit is lowered, so the scenario runs in a child process (this
//! binary again, running only `emfile_child`).

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rds_proxy_emulator::cluster::Topology;
use rds_proxy_emulator::control::Control;
use rds_proxy_emulator::iam::Iam;
use rds_proxy_emulator::proxy::{serve_endpoint, EndpointSpec, ProxyShared};
use rds_proxy_emulator::sts::{Sts, StsServer};
use rds_proxy_emulator::tls::ProxyTls;
use rds_proxy_emulator::{StackConfig, TargetRole};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CHILD: &str = "RDS_PROXY_EMULATOR_EMFILE_CHILD";

#[test]
fn accept_loops_back_off_when_out_of_file_descriptors() {
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "emfile_child",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "child did not run:\n{stdout}");
}

/// CPU time (user + system) this process has used.
fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the struct it is given.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut u), 0);
        u
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run in a child process by accept_loops_back_off_when_out_of_file_descriptors"]
async fn emfile_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let config = Arc::new(StackConfig::demo());
    let iam = Arc::new(Iam::new(Arc::clone(&config)));
    let control = Arc::new(Control::new());
    let any = "127.0.0.1:0".parse().expect("address");
    let sts = StsServer::start(
        Sts::with_control(Arc::clone(&iam), Arc::clone(&control)),
        any,
    )
    .await
    .expect("STS starts");
    let host = "db.proxy-x.us-east-1.rds.amazonaws.com".to_string();
    let tls = ProxyTls::generate(std::slice::from_ref(&host)).expect("certificates");
    let (_topology_tx, topology) = tokio::sync::watch::channel(Topology::default());
    let secrets = Arc::new(rds_proxy_emulator::secrets::SecretStore::new("us-east-1"));
    let shared = ProxyShared::new(
        iam,
        secrets,
        topology,
        Arc::clone(&tls.server_config),
        control,
    );
    let spec = EndpointSpec {
        name: "rw".into(),
        hostname: host,
        port: 5432,
        target_role: TargetRole::ReadWrite,
    };
    let (proxy_addr, _task) = serve_endpoint(Arc::clone(&shared), spec, any)
        .await
        .expect("proxy endpoint starts");

    // A descriptor limit a little above what is open; both client sockets made first, then
    // every descriptor left taken, so the servers cannot accept their connections.
    let open = std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count() as u64;
    // SAFETY: plain libc calls on a struct they fill or read.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = open + 16;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    let sts_socket = tokio::net::TcpSocket::new_v4().expect("socket");
    let proxy_socket = tokio::net::TcpSocket::new_v4().expect("socket");
    let mut filler = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => filler.push(f),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
            Err(e) => panic!("opening /dev/null: {e}"),
        }
    }
    let mut sts_client = sts_socket.connect(sts.addr()).await.expect("connect STS");
    let mut proxy_client = proxy_socket
        .connect(proxy_addr)
        .await
        .expect("connect proxy");

    // Both listeners now fail every accept with EMFILE. A loop that retries at once keeps
    // a core busy; one that waits between attempts uses next to nothing.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (cpu0, wall0) = (cpu_time(), Instant::now());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (cpu, wall) = (cpu_time() - cpu0, wall0.elapsed());
    println!("out of descriptors: {cpu:?} of CPU in {wall:?}");
    assert!(
        cpu < Duration::from_millis(100),
        "the accept loops spin: {cpu:?} of CPU in {wall:?}"
    );

    // Descriptors free again: both connections are accepted and served within the
    // longest wait (1 s) and some slack.
    drop(filler);
    let freed = Instant::now();
    let limit = Duration::from_secs(5);
    sts_client
        .write_all(
            b"POST / HTTP/1.1\r\nHost: sts\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await
        .expect("write to STS");
    let mut answer = Vec::new();
    tokio::time::timeout(limit, sts_client.read_to_end(&mut answer))
        .await
        .expect("STS answers once descriptors are free")
        .expect("read STS");
    assert!(
        answer.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    proxy_client
        .write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .expect("SSLRequest");
    let mut s = [0u8; 1];
    tokio::time::timeout(limit, proxy_client.read_exact(&mut s))
        .await
        .expect("the proxy answers once descriptors are free")
        .expect("read proxy");
    assert_eq!(&s, b"S");
    println!(
        "served again {:?} after descriptors were freed",
        freed.elapsed()
    );
}
