"""A fault-injecting HTTP proxy for S3 on 127.0.0.1 (in front of a moto server, or any endpoint).

Point boto3 at `proxy.endpoint` (AWS_ENDPOINT_URL) instead of the real endpoint. While armed, each
request draws from a seeded RNG: with probability `rate` it gets the next of the faults below instead
of the upstream's answer; otherwise it is forwarded verbatim (method, path, query, headers, body)
and the upstream's response is streamed back. Injection stops by itself after `max_faults`
faults or `max_seconds` since arming, so a test can never spin forever.

Faults (what S3-compatible stores and networks really do):
    "500"       500 InternalError
    "503"       503 ServiceUnavailable
    "slowdown"  503 SlowDown (S3's throttling answer)
    "429"       429 TooManyRequests (throttling from gateways/proxies in front of a store)
    "timeout"   no answer for `stall_s` seconds (past the client's read timeout), then close
    "drop"      the connection is closed without any response

Every fault is applied before the request reaches the upstream, so a faulted request changes
nothing there; the client's retry is what makes the operation succeed.
"""

from __future__ import annotations

import http.client
import random
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAULTS = ("500", "503", "slowdown", "429", "timeout", "drop")
_ERROR_REPLIES = {
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "503": (503, "ServiceUnavailable", "Service is unable to handle request."),
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
    # botocore's standard retry mode retries the throttling error codes, whatever the status.
    "429": (429, "TooManyRequestsException", "Too many requests."),
}
# Headers that describe one hop, not the message (RFC 9110 7.6.1); never forwarded.
_HOP_HEADERS = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
                "expect"}


class FaultProxy:
    """Use as a context manager; `arm()` starts injecting, `counts` says what was injected."""

    def __init__(self, upstream: str, seed: int = 0, rate: float = 0.2, faults=FAULTS,
                 max_faults: int = 30, max_seconds: float = 120.0, stall_s: float = 2.0,
                 max_timeouts: int = 3):
        target = urlsplit(upstream)
        self.upstream = (target.hostname, target.port or 80)
        self.rate, self.faults = rate, tuple(faults)
        self.max_faults, self.max_seconds = max_faults, max_seconds
        self.stall_s, self.max_timeouts = stall_s, max_timeouts
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._armed_at: float | None = None
        self.counts: Counter = Counter()  # fault kind -> injected
        self.requests = 0  # requests seen while armed
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name="fault-proxy", daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def injected(self) -> int:
        return sum(self.counts.values())

    def arm(self) -> None:
        with self._lock:
            self._armed_at = time.monotonic()

    def disarm(self) -> None:
        with self._lock:
            self._armed_at = None

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _draw(self) -> str | None:
        """The fault for the next request, or None to forward it."""
        with self._lock:
            if self._armed_at is None:
                return None
            self.requests += 1
            if self.injected >= self.max_faults or time.monotonic() - self._armed_at > self.max_seconds:
                return None
            if self._rng.random() >= self.rate:
                return None
            # Which requests fail is random; the kinds take turns, so every kind shows up once
            # `len(faults)` faults were injected, whatever the thread interleaving.
            kind = self.faults[self.injected % len(self.faults)]
            if kind == "timeout" and self.counts["timeout"] >= self.max_timeouts:
                kind = "503"  # stalls cost wall time: keep them few
            self.counts[kind] += 1
            return kind

    def _handler_class(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def _body(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _handle(self) -> None:
                body = self._body()  # always consume the request, so a faulted one leaves no junk
                fault = proxy._draw()
                if fault in _ERROR_REPLIES:
                    status, code, message = _ERROR_REPLIES[fault]
                    payload = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                               f"<Message>{message}</Message><RequestId>fault-proxy</RequestId></Error>").encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                if fault == "timeout":
                    time.sleep(proxy.stall_s)
                if fault in ("timeout", "drop"):
                    self.close_connection = True
                    return  # the socket closes with no response at all
                self._forward(body)

            def _forward(self, body: bytes) -> None:
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
                    conn.request(self.command, self.path, body=body if body or self.command in ("PUT", "POST") else None,
                                 headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                finally:
                    conn.close()
                self.send_response_only(response.status, response.reason)
                for key, value in response.getheaders():
                    if key.lower() not in _HOP_HEADERS and key.lower() != "content-length":
                        self.send_header(key, value)
                # HEAD answers carry the object's length but no body: keep the upstream's header.
                length = response.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
                if length is not None:
                    self.send_header("Content-Length", length)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        return Handler
