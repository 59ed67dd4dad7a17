"""Byte-level clients for the edge: HTTP/1.1 over a raw TLS socket, HTTP/2 through nghttp.

The stdlib client cannot send what these tests need (two Host lines, a chunked body with a
request in it, a body the server answers early) and has no HTTP/2. `h1_exchange` writes
exactly the bytes given and stops writing as soon as Envoy answers (a 413 comes before the
body is all sent, and writing on would only get the connection reset under the answer).
`h2_request` runs nghttp (Debian's nghttp2-client, which .ci/run installs) and reads the
status, headers and body from its verbose output.
"""

from __future__ import annotations

import json
import re
import select
import shutil
import socket
import ssl
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest

from tests.support.https import Reply

SERVER_NAME = "localhost"


class Listener(Protocol):
    """Where the edge listens (conftest.EdgeClient is one): the address to connect to, the
    CA, the TLS server name; `pace` waits for the client's own buckets (external stacks)."""

    host: str
    port: int
    ca: Path
    server_name: str

    def pace(self) -> None: ...


def _tls(listener: Listener) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(listener.ca))
    context.set_alpn_protocols(["http/1.1"])
    sock = socket.create_connection((listener.host, listener.port), timeout=10)
    return context.wrap_socket(sock, server_hostname=listener.server_name)


def _answered(tls: ssl.SSLSocket) -> bool:
    return bool(tls.pending()) or bool(select.select([tls], [], [], 0)[0])


def h1_exchange(listener: Listener, head: bytes, body: bytes = b"", *, step: int = 16384) -> Reply:
    """Send `head` then `body` (as given: framing is the caller's) on a fresh TLS
    connection, stopping early if Envoy answers; the first response on the connection."""
    listener.pace()
    with _tls(listener) as tls:
        tls.sendall(head)
        for start in range(0, len(body), step):
            if _answered(tls):
                break
            try:
                tls.sendall(body[start : start + step])
            except OSError:
                break
        return _read_response(tls)


def _read_response(tls: ssl.SSLSocket) -> Reply:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = tls.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a response: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
    length = int(next((v for k, v in headers if k.lower() == "content-length"), "0"))
    while len(rest) < length:
        chunk = tls.recv(65536)
        if not chunk:
            break
        rest += chunk
    return Reply(status, headers, rest[:length])


def content_length_head(method: str, path: str, length: int, *headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"host: {SERVER_NAME}", *headers]
    lines.append(f"content-length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunked(method: str, path: str, body: bytes, *headers: str) -> tuple[bytes, bytes]:
    """(head, body) of a chunked request: the body in 8 KiB chunks, then the last chunk."""
    lines = [f"{method} {path} HTTP/1.1", f"host: {SERVER_NAME}", *headers]
    lines.append("transfer-encoding: chunked")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    parts = [
        f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        for piece in (body[i : i + 8192] for i in range(0, len(body), 8192))
    ]
    return head, b"".join(parts) + b"0\r\n\r\n"


# --- HTTP/2 ---------------------------------------------------------------------------------


@dataclass
class H2Reply:
    """nghttp's view of one HTTP/2 request: status None if the stream was reset first."""

    status: int | None
    headers: list[tuple[str, str]]
    body: bytes
    reset: bool

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)


_RECV_HEADER = re.compile(r"^\[\s*[\d.]+\] recv \(stream_id=\d+\) ([^:\s][^:]*|:[a-z]+): (.*)$")


def h2_request(
    listener: Listener,
    path: str,
    *,
    method: str = "GET",
    headers: Sequence[tuple[str, str]] = (),
    body: Path | None = None,
    content_length: bool = True,
) -> H2Reply:
    """One HTTP/2 request through nghttp (`body` a file; without a content-length if
    `content_length` is False: the HTTP/2 twin of a chunked body). nghttp connects by
    the server name, so that name must lead to the listener (localhost does, on loopback)."""
    nghttp = shutil.which("nghttp")
    if nghttp is None:
        pytest.fail("nghttp is missing: apt-get install nghttp2-client (.ci/run does)")
    args = [nghttp, "-v", "-H", f":method: {method}"]
    for name, value in headers:
        args += ["-H", f"{name}: {value}"]
    if body is not None:
        args += ["-d", str(body)]
        if not content_length:
            args.append("--no-content-length")
    args.append(f"https://{listener.server_name}:{listener.port}{path}")
    listener.pace()
    out = subprocess.run(args, capture_output=True, timeout=60, check=False).stdout
    return _parse_nghttp(out)


# nghttp -v writes each DATA frame's payload to stdout just before the line logging it.
_DATA_FRAME = re.compile(rb"\[\s*[\d.]+\] recv DATA frame <length=(\d+)")


def _parse_nghttp(raw: bytes) -> H2Reply:
    body = b"".join(raw[m.start() - int(m.group(1)) : m.start()] for m in _DATA_FRAME.finditer(raw))
    out = raw.decode("latin-1")
    status: int | None = None
    headers: list[tuple[str, str]] = []
    for line in out.splitlines():
        match = _RECV_HEADER.match(line)
        if match is None:
            continue
        name, value = match.group(1), match.group(2)
        if name == ":status":
            status = int(value)
        else:
            headers.append((name, value))
    # A stream Envoy refused (e.g. over the codec's header limits) ends in RST_STREAM with
    # an error code; a 413's stream ends in RST_STREAM NO_ERROR (the rest of the body is
    # not wanted), which is an answer, not a refusal.
    lines = out.splitlines()
    reset = any(
        "NO_ERROR" not in nxt
        for line, nxt in zip(lines, [*lines[1:], ""], strict=True)
        if "recv RST_STREAM" in line
    )
    return H2Reply(status, headers, body, reset)
