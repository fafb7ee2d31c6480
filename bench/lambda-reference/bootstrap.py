"""A small Lambda runtime loop for handler.py (what a custom Python runtime's bootstrap does):
import the handler at init, then GET next / call / POST response or error, forever.
Talks to AWS_LAMBDA_RUNTIME_API over HTTP (stdlib only, like the managed runtime's client)."""
import http.client
import json
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from handler import lambda_handler  # noqa: E402  (init: imports boto3 and psycopg2)

API = os.environ["AWS_LAMBDA_RUNTIME_API"]
BASE = "/2018-06-01/runtime/invocation"


class Context:
    def __init__(self, headers):
        self.aws_request_id = headers.get("Lambda-Runtime-Aws-Request-Id")
        self.invoked_function_arn = headers.get("Lambda-Runtime-Invoked-Function-Arn")
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME")


def main():
    conn = http.client.HTTPConnection(API)
    while True:
        conn.request("GET", BASE + "/next")
        resp = conn.getresponse()
        event = json.loads(resp.read() or b"{}")
        headers = {k: v for k, v in resp.getheaders()}
        request_id = headers["Lambda-Runtime-Aws-Request-Id"]
        try:
            result = lambda_handler(event, Context(headers))
            path, body = f"{BASE}/{request_id}/response", json.dumps(result)
        except Exception as e:  # the managed runtime reports it the same way
            path = f"{BASE}/{request_id}/error"
            body = json.dumps({
                "errorType": type(e).__name__,
                "errorMessage": str(e),
                "stackTrace": traceback.format_exc().splitlines(),
            })
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        conn.getresponse().read()


if __name__ == "__main__":
    main()
