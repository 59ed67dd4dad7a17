"""A threaded TCP server on a background thread: the dev IdP and the demo upstream."""

from __future__ import annotations

import socketserver
import threading
from http.server import ThreadingHTTPServer


class BackgroundHttpServer:
    """Binds at construction (so `port` is known, 0 picks a free one); serves once started.

    `handler` is any socketserver handler: http.server's (the dev IdP) or a connection
    loop of its own (the demo upstream's h11 server).
    """

    def __init__(
        self, handler: type[socketserver.BaseRequestHandler], *, host: str, port: int
    ) -> None:
        self._httpd = ThreadingHTTPServer((host, port), handler)
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def start(self) -> int:
        self._thread.start()
        return self.port

    def stop(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()
