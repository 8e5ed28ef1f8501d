"""A real OTLP/HTTP trace receiver for tollgate's tracing tests (tests/it/tracing.rs).

POST /v1/traces bodies (application/x-protobuf) are decoded with the official
definitions (PyPI opentelemetry-proto: ExportTraceServiceRequest) and every span is kept
as JSON: its ids, parent, kind, name, attributes and resource. GET /spans returns them
all; GET /raw returns every request body as decoded text (protobuf text format), for
"no token anywhere" checks over everything that arrived.

Usage: receiver.py PORT_FILE. Listens on 127.0.0.1:0 and writes the port to PORT_FILE
once it accepts connections. The test kills it when done.
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf import text_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

LOCK = threading.Lock()
SPANS = []
RAW = []
REQUESTS = []


def value(v):
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind)


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        with LOCK:
            REQUESTS.append(
                {"path": self.path, "content_type": self.headers.get("content-type")}
            )
        if self.path != "/v1/traces":
            self.send_response(404)
            self.end_headers()
            return
        req = ExportTraceServiceRequest()
        try:
            req.ParseFromString(body)
        except Exception as e:  # noqa: BLE001 - answer what failed
            self.send_response(400)
            self.end_headers()
            self.wfile.write(str(e).encode())
            return
        spans = []
        for rs in req.resource_spans:
            resource = {a.key: value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    spans.append(
                        {
                            "trace_id": s.trace_id.hex(),
                            "span_id": s.span_id.hex(),
                            "parent_span_id": s.parent_span_id.hex(),
                            "name": s.name,
                            "kind": Span.SpanKind.Name(s.kind),
                            "start": s.start_time_unix_nano,
                            "end": s.end_time_unix_nano,
                            "status": s.status.code,
                            "trace_state": s.trace_state,
                            "attributes": {a.key: value(a.value) for a in s.attributes},
                            "resource": resource,
                            "scope": ss.scope.name,
                        }
                    )
        with LOCK:
            SPANS.extend(spans)
            RAW.append(text_format.MessageToString(req))
        out = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def do_GET(self):
        with LOCK:
            if self.path == "/spans":
                out = json.dumps({"spans": SPANS, "requests": REQUESTS}).encode()
                ctype = "application/json"
            elif self.path == "/raw":
                out = "\n".join(RAW).encode()
                ctype = "text/plain"
            else:
                self.send_response(404)
                self.end_headers()
                return
        self.send_response(200)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    tmp = sys.argv[1] + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(port))
    import os

    os.replace(tmp, sys.argv[1])
    server.serve_forever()


if __name__ == "__main__":
    main()
