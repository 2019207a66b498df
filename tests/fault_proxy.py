"""A tiny real HTTP proxy process for fault tests: forwards every request to an upstream server
and answers ``--status`` instead, once (or ``--times``), for the first request(s) whose path is
``--fail-path`` and whose body contains ``--fail-body``, counted only after a request to
``--after-path`` has been forwarded. With ``--forward-first`` such a request still reaches the
upstream, and only its answer is replaced (lost). Every request is logged to ``--log`` as one JSON line
(method, path, status, failed), so that a test can check that the fault really happened.

    python tests/fault_proxy.py --port 5001 --upstream http://127.0.0.1:5000 \\
        --after-path /api/2.0/mlflow/registered-models/alias \\
        --fail-path /api/2.0/mlflow/model-versions/set-tag --fail-body gate_decision --log proxy.jsonl
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--fail-path", default=None, help="none: forward everything (a process to kill)")
    ap.add_argument("--fail-body", default="")
    ap.add_argument("--after-path", default=None)
    ap.add_argument("--status", type=int, default=503)
    ap.add_argument("--times", type=int, default=1)
    ap.add_argument(
        "--forward-first",
        action="store_true",
        help="forward a failed request upstream before answering --status: the answer is lost, "
        "not the request (a server that dies after committing)",
    )
    ap.add_argument("--log", required=True)
    args = ap.parse_args()
    up = urllib.parse.urlsplit(args.upstream)
    state = {"armed": args.after_path is None, "left": args.times}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().strip().split(b";")[0], 16)
                    if size == 0:
                        self.rfile.readline()
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _record(self, status: int, failed: bool, query: str = "") -> None:
            with lock, open(args.log, "a") as fh:
                fh.write(
                    json.dumps(
                        {
                            "method": self.command,
                            "path": self.path.split("?")[0],
                            "query": query,
                            "status": status,
                            "failed": failed,
                        }
                    )
                    + "\n"
                )

        def _forward(self, body: bytes) -> tuple[http.client.HTTPResponse, bytes]:
            conn = http.client.HTTPConnection(up.hostname, up.port, timeout=120)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP and k.lower() != "host"}
            headers["Host"] = up.netloc
            headers["Content-Length"] = str(len(body))
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                return resp, resp.read()
            finally:
                conn.close()

        def _handle(self) -> None:
            body = self._body()
            path, _, query = self.path.partition("?")
            with lock:
                fail = (
                    args.fail_path is not None
                    and state["armed"]
                    and state["left"] > 0
                    and path == args.fail_path
                    and args.fail_body.encode() in body
                )
                if fail:
                    state["left"] -= 1
            if fail and args.forward_first:
                self._forward(body)  # the upstream acts on it; its answer never reaches the client
            if fail:
                payload = json.dumps(
                    {"error_code": "TEMPORARILY_UNAVAILABLE", "message": "fault proxy: upstream unavailable"}
                ).encode()
                self.send_response(args.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                self._record(args.status, True)
                return
            resp, data = self._forward(body)
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in _HOP and k.lower() != "content-length":
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            if args.after_path is not None and path == args.after_path and resp.status < 300:
                with lock:
                    state["armed"] = True
            self._record(resp.status, False, query)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle

        def log_message(self, *a) -> None:  # the JSON log is the record
            pass

    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
