"""A test workload with state that only lives in memory.

`GET /` (any path but `/healthz`) answers JSON with a counter that grows by one per request,
a random token chosen at start-up and the process id. A fresh process starts again at 1 with a
new token, so a reply that continues the count with the same token proves the process (not a
restart) answered: its memory survived a checkpoint and restore.

Listens on $PORT (default 8080) on every address; stdlib only.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = secrets.token_hex(8)
STARTED = time.time()
# Allocated up front so a checkpoint carries a noticeable amount of memory: $BALLAST_MB.
BALLAST = bytearray(os.urandom(int(os.environ.get("BALLAST_MB", "0")) * 1024 * 1024))


class Counter(BaseHTTPRequestHandler):
    count = 0

    def do_GET(self) -> None:
        if self.path == "/healthz":
            # Probes must not move the counter.
            self._reply(b"ok", "text/plain")
            return
        Counter.count += 1
        body = json.dumps(
            {
                "count": Counter.count,
                "token": TOKEN,
                "pid": os.getpid(),
                "started": STARTED,
                "ballastBytes": len(BALLAST),
            }
        ).encode()
        self._reply(body, "application/json")

    def _reply(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        # One line per counted request on stdout keeps `kubectl logs` useful, probes stay quiet.
        if self.path == "/healthz":
            return
        # After a restore, stdout may be whatever the restoring process gave; a lost log line
        # must never cost the reply.
        with contextlib.suppress(OSError):
            print(f"{self.address_string()} {format % args}", flush=True)


def main() -> None:
    port = int(os.environ.get("PORT", "8080"))
    server = ThreadingHTTPServer(("0.0.0.0", port), Counter)
    print(f"serving on :{port} token={TOKEN}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
