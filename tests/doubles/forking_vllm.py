"""A stand-in for vLLM's server that starts processes as vLLM does, for launcher tests.

    python forking_vllm.py PORT PIDS_FILE

It starts a forked child and a spawned one (a fresh interpreter), which forks a
grandchild, writes every pid (its own first) to PIDS_FILE, then answers /health and the
warm-up request until it is killed.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.queues import Queue


def _sleep(pids: Queue[int]) -> None:
    pids.put(os.getpid())
    time.sleep(3600)


def _spawned(pids: Queue[int]) -> None:
    grandchild = multiprocessing.get_context("fork").Process(target=_sleep, args=(pids,))
    grandchild.start()
    _sleep(pids)


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        body = json.dumps({"choices": [{"message": {"content": "x"}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main() -> None:
    port, pids_file = int(sys.argv[1]), sys.argv[2]
    pids: Queue[int] = multiprocessing.get_context("spawn").Queue()
    multiprocessing.get_context("fork").Process(target=_sleep, args=(pids,)).start()
    multiprocessing.get_context("spawn").Process(target=_spawned, args=(pids,)).start()
    found = [os.getpid()] + [pids.get(timeout=60) for _ in range(3)]
    with open(pids_file + ".tmp", "w") as out:
        out.write("\n".join(map(str, found)))
    os.rename(pids_file + ".tmp", pids_file)
    ThreadingHTTPServer(("127.0.0.1", port), _Handler).serve_forever()


if __name__ == "__main__":
    main()
