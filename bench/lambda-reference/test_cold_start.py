"""Tests of cold_start.py, the Runtime API emulator the Lambda benchmarks time functions with,
against tiny stand-in functions (stdlib Python): a success with warm invocations, and each way
a run can fail, which must stop the harness with the reason and the function's output, not
a traceback. Run: python3 -m unittest bench/lambda-reference/test_cold_start.py
(`make test-bench-smoke` does)."""
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
HARNESS = os.path.join(HERE, "cold_start.py")

# A function in the Runtime API's terms. MODE: ok | error | exit | hang | chatty.
FUNCTION = textwrap.dedent("""
    import http.client, json, os, sys, time
    mode = sys.argv[1]
    print(f"init: mode {mode}", file=sys.stderr, flush=True)
    if mode == "exit":
        sys.exit(3)
    if mode == "hang":
        time.sleep(60)
    if mode == "chatty":
        sys.stdout.write("x" * 1_000_000 + "\\n")
        sys.stdout.flush()
    api = os.environ["AWS_LAMBDA_RUNTIME_API"]
    base = "/2018-06-01/runtime/invocation"
    conn = http.client.HTTPConnection(api)
    while True:
        conn.request("GET", base + "/next")
        resp = conn.getresponse()
        resp.read()
        rid = resp.getheader("Lambda-Runtime-Aws-Request-Id")
        if mode == "error":
            print("handler: AssumeRoleFailed", file=sys.stderr, flush=True)
            path, body = f"{base}/{rid}/error", {"errorType": "AssumeRoleFailed"}
        else:
            path, body = f"{base}/{rid}/response", {"statusCode": 200}
        conn.request("POST", path, body=json.dumps(body))
        conn.getresponse().read()
""")


class ColdStartHarness(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.TemporaryDirectory()
        cls.function = os.path.join(cls.dir.name, "function.py")
        with open(cls.function, "w") as f:
            f.write(FUNCTION)

    @classmethod
    def tearDownClass(cls):
        cls.dir.cleanup()

    def harness(self, mode, *args, timeout="10"):
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, HARNESS, "--timeout", timeout, "--warmup", "0", *args,
                            "--", sys.executable, self.function, mode],
                           capture_output=True, text=True, timeout=60)
        return r, time.monotonic() - t0

    def assert_reported(self, r, *needles):
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertNotIn("Traceback", r.stderr)
        for needle in needles:
            self.assertIn(needle, r.stderr)

    def test_success_prints_one_line_per_run_with_warm_invocations(self):
        r, _ = self.harness("ok", "--runs", "2", "--warm", "2", "--label", "t")
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = [json.loads(line) for line in r.stdout.splitlines()]
        self.assertEqual([row["run"] for row in rows], [1, 2])
        for row in rows:
            self.assertEqual(json.loads(row["body"]), {"statusCode": 200})
            self.assertEqual(len(row["warm_ms"]), 2)
            self.assertGreater(row["peak_rss_kb"], 0)
        self.assertIn("t: 2 cold starts", r.stderr)
        self.assertIn("t: 4 warm invocations", r.stderr)

    def test_an_error_answer_shows_the_body_and_the_output(self):
        r, _ = self.harness("error", "--runs", "1")
        self.assert_reported(r, "answered error", "AssumeRoleFailed", "handler: AssumeRoleFailed")

    def test_an_exit_before_answering_is_reported_at_once_with_the_output(self):
        r, took = self.harness("exit", "--runs", "1", timeout="30")
        self.assert_reported(r, "exited (code 3) before answering", "init: mode exit")
        self.assertLess(took, 15, "the harness waited for the timeout instead of noticing the exit")

    def test_a_timeout_shows_the_output(self):
        r, _ = self.harness("hang", "--runs", "1", timeout="1")
        self.assert_reported(r, "no response within 1.0 s", "init: mode hang")

    def test_a_function_writing_more_than_a_pipe_holds_is_not_blocked(self):
        r, _ = self.harness("chatty", "--runs", "1")
        self.assertEqual(r.returncode, 0, r.stderr[-2000:])


if __name__ == "__main__":
    unittest.main()
