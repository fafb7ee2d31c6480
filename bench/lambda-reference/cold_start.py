"""Cold starts (and warm invocations) under a minimal Lambda Runtime API emulator, measured
the same way for any runtime: a fresh process per run, the clock started just before it is
spawned and stopped when its first POST .../response (or .../error) arrives; peak RSS is the
process's VmHWM read at that moment (RssAnon, its private memory, too).

With --warm N the same process then gets N more invocations, one after the other (after
--gap-ms of idle time each): a warm invocation is timed from the moment its event is written
in answer to the function's GET .../next to its POST .../response. VmHWM is read again after
the last one. Then the process, blocked on its next GET .../next, gets SIGKILL.

    python3 cold_start.py --runs 20 --label rust -- ./target/release/connection-test
    python3 cold_start.py --runs 20 --warm 5 --label rust -- ./target/release/connection-test

The function's environment is this process's environment plus the AWS_LAMBDA_* variables
of the managed runtime. Prints one JSON object per run and a summary line on stderr. A run
that fails (an error answer, an exit before answering, a timeout) stops the harness with
exit code 1, the reason and the function's last output (stdout and stderr).
Loopback only: the emulator listens on 127.0.0.1.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BASE = "/2018-06-01/runtime/invocation"


class Run:
    def __init__(self, invocations=1, gap_s=0.0):
        # One request id per invocation; invocation 0 is the cold one.
        self.request_ids = [str(uuid.uuid4()) for _ in range(invocations)]
        self.gap_s = gap_s
        self.served = 0  # events handed out so far
        self.lock = threading.Lock()
        self.done = threading.Event()  # every invocation answered, or one failed
        self.over = threading.Event()  # done, or the process exited
        self.exit_code = None
        self.killed = threading.Event()
        self.kind = None
        self.body = None
        self.t_response = None  # first response (cold)
        self.t_next = None  # first GET .../next (init done)
        self.t_sent = [None] * invocations  # event written
        self.t_answered = [None] * invocations  # response or error received
        self.warm_bodies = []
        self.pid = None
        self.hwm_kb = None
        self.anon_kb = None
        self.hwm_end_kb = None
        self.failed = None  # (kind, body) of a failed warm invocation

    def finish(self):
        self.done.set()
        self.over.set()


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
    # TCP_NODELAY on every accepted socket. The handler writes the status line and headers,
    # then the body, in two sends: with Nagle on, the body waits on a kept-alive connection
    # for the client's ACK of the headers, which the client delays (40 ms on Linux). That
    # stall would be counted in the function's warm invocation time.
    disable_nagle_algorithm = True
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
        with run.lock:
            i = run.served
            if i < len(run.request_ids):
                run.served += 1
        if i >= len(run.request_ids) or run.done.is_set():
            # No more invocations: hold it until the run is over (the process is then killed).
            run.killed.wait(120)
            self.close_connection = True
            return
        if i == 0:
            run.t_next = time.monotonic()
        elif run.gap_s > 0:
            time.sleep(run.gap_s)
        run.t_sent[i] = time.monotonic()
        self._reply(200, b"{}", {
            "Content-Type": "application/json",
            "Lambda-Runtime-Aws-Request-Id": run.request_ids[i],
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
        parts = self.path[len(BASE) + 1:].split("/") if self.path.startswith(BASE + "/") else []
        if len(parts) == 2 and parts[0] in run.request_ids:
            i, kind = run.request_ids.index(parts[0]), parts[1]
            text = body.decode("utf-8", "replace")
            if run.t_answered[i] is None:
                run.t_answered[i] = t
                last = i == len(run.request_ids) - 1
                if i == 0:
                    run.t_response = t
                    run.hwm_kb, run.anon_kb = proc_status_kb(run.pid)
                    run.kind, run.body = kind, text
                    if kind != "response":
                        last = True
                else:
                    run.warm_bodies.append(text)
                    if kind != "response":
                        run.failed = (kind, text)
                        last = True
                if last:
                    run.hwm_end_kb, _ = proc_status_kb(run.pid)
                    run.finish()
            return self._reply(202, b'{"status":"OK"}', {"Content-Type": "application/json"})
        if self.path.endswith("/init/error"):
            run.t_response = t
            run.hwm_kb, run.anon_kb = proc_status_kb(run.pid)
            run.kind, run.body = "init/error", body.decode("utf-8", "replace")
            run.finish()
            return self._reply(202, b'{"status":"OK"}')
        return self._reply(404)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a killed function's connection: nothing to report


def one_run(cmd, base_env, timeout, warm=0, gap_s=0.0):
    # A new server (new port) per run, so that nothing a killed process left in a socket
    # can be taken for the next process's request.
    run = Run(1 + warm, gap_s)
    Api.run = run
    server = Server(("127.0.0.1", 0), Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = dict(base_env, AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{server.server_address[1]}")
    # The function's stdout and stderr, together, go to a file: a pipe nobody reads until
    # the run is over would block a function that logs more than the pipe holds.
    out = tempfile.TemporaryFile()
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    run.pid = proc.pid

    def reap():
        run.exit_code = proc.wait()
        run.over.set()
    threading.Thread(target=reap, daemon=True).start()
    exited = run.over.wait(timeout) and not run.done.is_set()
    proc.kill()
    proc.wait()
    run.killed.set()
    server.shutdown()
    server.server_close()
    out.seek(0)
    output = out.read().decode(errors="replace")
    out.close()
    if not run.done.is_set():
        what = (f"the function exited (code {run.exit_code}) before answering" if exited
                else f"no response within {timeout} s")
        raise SystemExit(f"{what} (events served: {run.served}); its output:\n{output[-2000:]}")
    if run.failed:
        run.kind, run.body = run.failed
    return {
        "warm_ms": [(b - a) * 1000.0 for a, b in zip(run.t_sent[1:], run.t_answered[1:]) if a and b],
        "warm_bodies": run.warm_bodies,
        "peak_rss_end_kb": run.hwm_end_kb,
        "ms": (run.t_response - t0) * 1000.0,
        "init_ms": (run.t_next - t0) * 1000.0 if run.t_next else None,
        "peak_rss_kb": run.hwm_kb,
        "anon_kb": run.anon_kb,
        "kind": run.kind,
        "body": run.body,
        "output_tail": output[-2000:] if run.kind != "response" else "",
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=1, help="uncounted runs first (page cache)")
    ap.add_argument("--label", default="function")
    ap.add_argument("--timeout", type=float, default=30,
                    help="seconds a run (all its invocations) may take")
    ap.add_argument("--warm", type=int, default=0,
                    help="warm invocations per process after the cold one")
    ap.add_argument("--gap-ms", type=float, default=0,
                    help="idle time before each warm invocation's event is handed out")
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
        # Every process here is an on-demand cold start (Lambda's own value for those).
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_EC2_METADATA_DISABLED": "true",
    })
    # Lambda sets both; boto3 reads AWS_DEFAULT_REGION.
    if "AWS_REGION" in env:
        env.setdefault("AWS_DEFAULT_REGION", env["AWS_REGION"])
    results = []
    for i in range(args.warmup + args.runs):
        r = one_run(cmd, env, args.timeout, args.warm, args.gap_ms / 1000.0)
        if r["kind"] != "response":
            raise SystemExit(f"{args.label}: run {i} answered {r['kind']}: {r['body']}\n"
                             f"its output:\n{r['output_tail']}")
        if i >= args.warmup:
            results.append(r)
            print(json.dumps({"label": args.label, "run": len(results), "ms": round(r["ms"], 2),
                              "init_ms": round(r["init_ms"], 2),
                              "peak_rss_kb": r["peak_rss_kb"], "anon_kb": r["anon_kb"], "body": r["body"],
                              "warm_ms": [round(w, 2) for w in r["warm_ms"]],
                              "warm_bodies": r["warm_bodies"],
                              "peak_rss_end_kb": r["peak_rss_end_kb"]}), flush=True)
    ms = [r["ms"] for r in results]
    rss = [r["peak_rss_kb"] for r in results]
    print(f"{args.label}: {len(ms)} cold starts, median {statistics.median(ms):.1f} ms "
          f"(min {min(ms):.1f}, max {max(ms):.1f}); peak RSS median {statistics.median(rss) / 1024:.1f} MiB",
          file=sys.stderr)
    warm = [w for r in results for w in r["warm_ms"]]
    if warm:
        print(f"{args.label}: {len(warm)} warm invocations, median {statistics.median(warm):.1f} ms "
              f"(min {min(warm):.1f}, max {max(warm):.1f})", file=sys.stderr)


if __name__ == "__main__":
    main()
