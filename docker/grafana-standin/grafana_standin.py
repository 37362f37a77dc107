"""Answers like Grafana's HTTP API where the offline tests look, from the files
the deployment uploaded: /api/health (open), /api/search and /api/datasources
(admin user and the password from GF_SECURITY_ADMIN_PASSWORD__FILE)."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PROVISIONING = Path(os.environ.get("GF_PATHS_PROVISIONING", "/etc/grafana/provisioning"))


def _password() -> str:
    return Path(os.environ["GF_SECURITY_ADMIN_PASSWORD__FILE"]).read_text().strip()


def _dashboards() -> list[dict[str, object]]:
    found = []
    for provider in sorted((PROVISIONING / "dashboards").glob("*.yaml")):
        for folder in re.findall(r"^\s*path:\s*(\S+)", provider.read_text(), re.MULTILINE):
            for path in sorted(Path(folder).glob("*.json")):
                board = json.loads(path.read_text())
                found.append({"uid": board["uid"], "title": board["title"], "type": "dash-db"})
    return found


def _datasources() -> list[dict[str, str]]:
    found = []
    for path in sorted((PROVISIONING / "datasources").glob("*.yaml")):
        text = path.read_text()
        found.append(
            {
                "uid": re.findall(r"^\s*uid:\s*(\S+)", text, re.MULTILINE)[0],
                "url": re.findall(r"^\s*url:\s*(\S+)", text, re.MULTILINE)[0],
            }
        )
    return found


class Handler(BaseHTTPRequestHandler):
    def _send(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/api/health":
            self._send(200, {"database": "ok", "version": "stand-in"})
            return
        expected = "Basic " + base64.b64encode(f"admin:{_password()}".encode()).decode()
        if self.headers.get("Authorization") != expected:
            self._send(401, {"message": "Invalid username or password"})
            return
        if path == "/api/search":
            self._send(200, _dashboards())
        elif path == "/api/datasources":
            self._send(200, _datasources())
        else:
            self._send(404, {"message": "Not found"})


def main() -> int:
    # Fail at start, as Grafana would, when the provisioned files are unusable.
    _password()
    print(f"grafana stand-in: {len(_dashboards())} dashboard(s)", file=sys.stderr, flush=True)
    server = ThreadingHTTPServer(("0.0.0.0", 3000), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
