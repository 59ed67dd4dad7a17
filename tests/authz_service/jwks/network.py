"""Loopback-only network doubles for the fetcher tests: a private CA and an HTTP proxy.

Everything listens on 127.0.0.1 and connects only to 127.0.0.1: the proxy maps the
names the tests use (e.g. idp.example.test) to loopback instead of resolving them.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from socketserver import BaseRequestHandler, ThreadingTCPServer

from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from devstack.pki import issue_certificate, make_ca


class PrivateCa:
    """A throwaway CA in a temp dir that issues server certificates for given names
    (devstack's dev-PKI CA and issuer, written somewhere else)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._cert, self._key = make_ca()
        self.ca_file = directory / "ca.pem"
        self.ca_file.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def server_context(self, *names: str) -> ssl.SSLContext:
        """A server-side TLS context with a certificate for `names` signed by this CA."""
        cert_pem, key_pem = issue_certificate(
            common_name=names[0],
            ca_cert=self._cert,
            ca_key=self._key,
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
            sans=names,
        )
        stem = self.directory / names[0].replace(":", "_")
        cert_file, key_file = stem.with_suffix(".pem"), stem.with_suffix(".key")
        cert_file.write_bytes(cert_pem)
        key_file.write_bytes(key_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        return context


@dataclass
class ProxyLog:
    """What the proxy saw: requests by (method, target), and Proxy-Authorization values."""

    requests: Counter[tuple[str, str]]
    authorizations: list[str | None]


class LocalProxy:
    """An HTTP proxy on 127.0.0.1: CONNECT tunnels and absolute-form GETs, counted.

    Names in `hosts` map to loopback; anything else is refused (502), so a test can never
    make it connect off this machine. `refuse_connect` answers every CONNECT with 403.
    """

    def __init__(self, hosts: dict[str, str], *, refuse_connect: bool = False) -> None:
        self.hosts = hosts
        self.refuse_connect = refuse_connect
        self.log = ProxyLog(Counter(), [])
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseRequestHandler):
            def handle(self) -> None:
                proxy._handle(self.request)

        ThreadingTCPServer.allow_reuse_address = True
        self.server = ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.02,))
        self._thread.daemon = True
        self._thread.start()

    @property
    def used(self) -> int:
        return sum(self.log.requests.values())

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    def _handle(self, client: socket.socket) -> None:
        client.settimeout(5)
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 16384:
            chunk = client.recv(4096)
            if not chunk:
                return
            head += chunk
        header_block, _, rest = head.partition(b"\r\n\r\n")
        lines = header_block.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        with self._lock:
            self.log.requests[(method, target)] += 1
            self.log.authorizations.append(fields.get("Proxy-Authorization"))
        if method == "CONNECT":
            self._connect(client, target)
        else:
            self._forward(client, method, target, lines[1:], rest)

    def _upstream(self, authority: str) -> socket.socket | None:
        host, _, port = authority.rpartition(":")
        address = self.hosts.get(host.strip("[]"))
        if address is None:
            return None
        return socket.create_connection((address, int(port)), timeout=5)

    def _connect(self, client: socket.socket, authority: str) -> None:
        upstream = None if self.refuse_connect else self._upstream(authority)
        if upstream is None:
            code = b"403 Forbidden" if self.refuse_connect else b"502 Bad Gateway"
            client.sendall(b"HTTP/1.1 " + code + b"\r\nContent-Length: 0\r\n\r\n")
            return
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        _pipe(client, upstream)

    def _forward(
        self, client: socket.socket, method: str, target: str, headers: list[str], rest: bytes
    ) -> None:
        # absolute-form: http://host:port/path -> origin-form to the mapped upstream
        without_scheme = target.split("://", 1)[1]
        authority, _, path = without_scheme.partition("/")
        if ":" not in authority:
            authority += ":80"
        upstream = self._upstream(authority)
        if upstream is None:
            client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        kept = [h for h in headers if not h.lower().startswith("proxy-")]
        request = f"{method} /{path} HTTP/1.1\r\n" + "".join(f"{h}\r\n" for h in kept) + "\r\n"
        upstream.sendall(request.encode("latin-1") + rest)
        _pipe(client, upstream)


def _pipe(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    try:
        while True:
            readable, _, _ = select.select([a, b], [], [], 5)
            if not readable:
                return
            for sock in readable:
                data = sock.recv(65536)
                if not data:
                    return
                (b if sock is a else a).sendall(data)
    except OSError:
        return
    finally:
        b.close()
