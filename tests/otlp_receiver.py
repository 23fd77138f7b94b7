"""An OTLP trace receiver for tests/tests/tracing.rs, independent of the Rust exporter.

Serves OTLP/gRPC (grpcio + the PyPI opentelemetry-proto classes) and OTLP/HTTP protobuf
(http.server, POST /v1/traces) on 127.0.0.1 ephemeral ports, prints
`listening grpc=ADDR http=ADDR`, and appends every span it receives to the file named
by its first argument as one JSON line (ids in lowercase hex, attributes as a flat
object, the transport and the request's headers included).

Run with the repo's .venv (scripts/ensure-deps.sh installs grpcio and opentelemetry-proto).
"""

import json
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

OUT = sys.argv[1]
LOCK = threading.Lock()


def value(v):
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind) if kind else None


def record(req, transport, headers):
    lines = []
    for rs in req.resource_spans:
        resource = {kv.key: value(kv.value) for kv in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                lines.append(json.dumps({
                    "transport": transport,
                    "headers": headers,
                    "resource": resource,
                    "scope": ss.scope.name,
                    "trace_id": s.trace_id.hex(),
                    "span_id": s.span_id.hex(),
                    "parent_span_id": s.parent_span_id.hex(),
                    "trace_state": s.trace_state,
                    "name": s.name,
                    "kind": s.kind,
                    "start_ns": s.start_time_unix_nano,
                    "end_ns": s.end_time_unix_nano,
                    "attributes": {kv.key: value(kv.value) for kv in s.attributes},
                    "status": {"code": s.status.code, "message": s.status.message},
                }))
    with LOCK, open(OUT, "a", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")


class Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        headers = {k: v for k, v in context.invocation_metadata()}
        record(request, "grpc", headers)
        return trace_service_pb2.ExportTraceServiceResponse()


class Http(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path != "/v1/traces":
            self.send_response(404)
            self.end_headers()
            return
        req = trace_service_pb2.ExportTraceServiceRequest()
        req.ParseFromString(body)
        record(req, "http", {k.lower(): v for k, v in self.headers.items()})
        out = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
    gport = server.add_insecure_port("127.0.0.1:0")
    server.start()
    http = ThreadingHTTPServer(("127.0.0.1", 0), Http)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    print(f"listening grpc=127.0.0.1:{gport} http=127.0.0.1:{http.server_address[1]}", flush=True)
    # Until the test kills us.
    server.wait_for_termination()


if __name__ == "__main__":
    main()
