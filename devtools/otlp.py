"""A stand-in for an OpenTelemetry collector: an OTLP/HTTP endpoint on a spare port, for the tracing
tests and the benchmark's tracing rows."""

from __future__ import annotations

import http.server
import threading


class OtlpSink:
    """An OTLP/HTTP endpoint that takes every export and keeps its size (and, with ``keep``, the
    body), standing in for a collector: what the service pays is building, batching and sending."""

    def __init__(self, keep: bool = False) -> None:
        sink = self
        self.requests = self.bytes = 0
        self.bodies: list[bytes] = []  # with keep (tests read them)

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                sink.bytes += len(body)
                sink.requests += 1
                if keep:
                    sink.bodies.append(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
