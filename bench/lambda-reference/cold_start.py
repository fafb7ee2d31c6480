"""Cold starts under a minimal Lambda Runtime API emulator, measured the same way for any
runtime: a fresh process per run, the clock started just before it is spawned and stopped
when its first POST .../response (or .../error) arrives; peak RSS is the process's VmHWM
read at that moment (RssAnon, its private memory, too) (it is then blocked on its second GET .../next and gets SIGKILL).

    python3 cold_start.py --runs 20 --label rust -- ./target/release/connection-test

The function's environment is this process's environment plus the AWS_LAMBDA_* variables
of the managed runtime. Prints one JSON object per run and a summary line on stderr.
Loopback only: the emulator listens on 127.0.0.1.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BASE = "/2018-06-01/runtime/invocation"


class Run:
    def __init__(self):
        self.request_id = str(uuid.uuid4())
        self.served = False
        self.done = threading.Event()
        self.killed = threading.Event()
        self.kind = None
        self.body = None
        self.t_response = None
        self.t_next = None
        self.pid = None
        self.hwm_kb = None
        self.anon_kb = None


def proc_status_kb(pid):
    """VmHWM (peak RSS) and RssAnon (private memory now) of pid, in kB."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in ("VmHWM", "RssAnon"):
                    out[key] = int(line.split()[1])
    except OSError:
        pass
    return out.get("VmHWM"), out.get("RssAnon")


class Api(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    run = None  # the current Run

    def log_message(self, *args):
        pass

    def _reply(self, code, body=b"", headers=None):
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        run = Api.run
        if self.path != BASE + "/next":
            return self._reply(404)
        if run.served:
            # The second /next: hold it until the run is over (the process is then killed).
            run.killed.wait(120)
            self.close_connection = True
            return
        run.served = True
        run.t_next = time.monotonic()
        self._reply(200, b"{}", {
            "Content-Type": "application/json",
            "Lambda-Runtime-Aws-Request-Id": run.request_id,
            "Lambda-Runtime-Deadline-Ms": str(int(time.time() * 1000) + 60_000),
            "Lambda-Runtime-Invoked-Function-Arn":
                "arn:aws:lambda:us-east-1:111111111111:function:connectiontest-lambda",
            "Lambda-Runtime-Trace-Id": "Root=1-00000000-000000000000000000000000;Sampled=0",
        })

    def do_POST(self):
        run = Api.run
        t = time.monotonic()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if self.path.startswith(BASE + "/" + run.request_id + "/"):
            kind = self.path.rsplit("/", 1)[1]
            if run.t_response is None:
                run.t_response = t
                run.hwm_kb, run.anon_kb = proc_status_kb(run.pid)
                run.kind, run.body = kind, body.decode("utf-8", "replace")
                run.done.set()
            return self._reply(202, b'{"status":"OK"}', {"Content-Type": "application/json"})
        if self.path.endswith("/init/error"):
            run.t_response = t
            run.hwm_kb, run.anon_kb = proc_status_kb(run.pid)
            run.kind, run.body = "init/error", body.decode("utf-8", "replace")
            run.done.set()
            return self._reply(202, b'{"status":"OK"}')
        return self._reply(404)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a killed function's connection: nothing to report


def one_run(cmd, base_env, timeout):
    # A new server (new port) per run, so that nothing a killed process left in a socket
    # can be taken for the next process's request.
    run = Run()
    Api.run = run
    server = Server(("127.0.0.1", 0), Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = dict(base_env, AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{server.server_address[1]}")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    run.pid = proc.pid
    finished = run.done.wait(timeout)
    proc.kill()
    _, err = proc.communicate()
    run.killed.set()
    server.shutdown()
    server.server_close()
    if not finished:
        raise SystemExit(f"no response within {timeout} s (GET next served: {run.served}); output:\n{err.decode(errors='replace')[-2000:]}")
    return {
        "ms": (run.t_response - t0) * 1000.0,
        "init_ms": (run.t_next - t0) * 1000.0 if run.t_next else None,
        "peak_rss_kb": run.hwm_kb,
        "anon_kb": run.anon_kb,
        "kind": run.kind,
        "body": run.body,
        "stderr_tail": err.decode(errors="replace")[-500:] if run.kind != "response" else "",
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=1, help="uncounted runs first (page cache)")
    ap.add_argument("--label", default="function")
    ap.add_argument("--timeout", type=float, default=30)
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("the function's command is required after --")

    env = dict(os.environ)
    env.update({
        "AWS_LAMBDA_FUNCTION_NAME": "connectiontest-lambda",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/connectiontest-lambda",
        "AWS_LAMBDA_LOG_STREAM_NAME": "local",
        "AWS_EC2_METADATA_DISABLED": "true",
    })
    # Lambda sets both; boto3 reads AWS_DEFAULT_REGION.
    if "AWS_REGION" in env:
        env.setdefault("AWS_DEFAULT_REGION", env["AWS_REGION"])
    results = []
    for i in range(args.warmup + args.runs):
        r = one_run(cmd, env, args.timeout)
        if r["kind"] != "response":
            raise SystemExit(f"{args.label}: run {i} answered {r['kind']}: {r['body']}\n{r['stderr_tail']}")
        if i >= args.warmup:
            results.append(r)
            print(json.dumps({"label": args.label, "run": len(results), "ms": round(r["ms"], 2),
                              "init_ms": round(r["init_ms"], 2),
                              "peak_rss_kb": r["peak_rss_kb"], "anon_kb": r["anon_kb"], "body": r["body"]}), flush=True)
    ms = [r["ms"] for r in results]
    rss = [r["peak_rss_kb"] for r in results]
    print(f"{args.label}: {len(ms)} cold starts, median {statistics.median(ms):.1f} ms "
          f"(min {min(ms):.1f}, max {max(ms):.1f}); peak RSS median {statistics.median(rss) / 1024:.1f} MiB",
          file=sys.stderr)


if __name__ == "__main__":
    main()
