"""Serve examples/web (and, optionally, one more folder) on the loopback address for the page index.html.

    python examples/web/serve.py [--port 8000] [--data FOLDER]    # then open http://127.0.0.1:8000/

Browsers do not let a page opened from file:// load WebAssembly, so the page needs a server; this one listens on
127.0.0.1 only. `--data FOLDER` serves FOLDER under /data/ (an exported model, images).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import mimetypes
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
mimetypes.add_type("text/javascript", ".mjs")
mimetypes.add_type("application/wasm", ".wasm")


class _Handler(http.server.SimpleHTTPRequestHandler):
    data: Path | None = None

    def translate_path(self, path: str) -> str:
        clean = path.split("?", 1)[0].split("#", 1)[0]
        if self.data is not None and clean.startswith("/data/"):
            target = (self.data / clean[len("/data/"):].lstrip("/")).resolve()
            return str(target) if self.data in target.parents else str(self.data / "\0missing")  # no escaping '..'
        return super().translate_path(path)

    def guess_type(self, path: str | Path) -> str:  # type: ignore[override]
        return mimetypes.guess_type(str(path))[0] or "application/octet-stream"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


def start(port: int = 0, data: Path | None = None) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Start serving in a daemon thread; returns the server (call .shutdown()) and its base URL."""
    handler = type("Handler", (_Handler,), {"data": data.resolve() if data else None})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(handler, directory=str(HERE)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--data", type=Path, help="a folder served under /data/")
    args = parser.parse_args()
    server, url = start(args.port, args.data)
    print(f"serving {HERE} at {url} (Ctrl-C stops)")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.shutdown()


if __name__ == "__main__":
    main()
