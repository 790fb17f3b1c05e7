"""A stand-in for vLLM's server that misbehaves on cue, for launcher tests.

    python fake_vllm.py PORT MODE   MODE: ok | fail-warmup

It answers /health at once, answers (or fails) the first chat completion, then
exits 0 so the launcher's wait returns.
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    port, mode = int(sys.argv[1]), sys.argv[2]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/health" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if mode == "ok":
                body = json.dumps({"choices": [{"message": {"content": "x"}}]}).encode()
                self.send_response(200)
            else:
                body = b'{"error": {"message": "boom"}}'
                self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            threading.Timer(0.3, server.shutdown).start()

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.serve_forever()


if __name__ == "__main__":
    main()
