"""A gRPC service and its client (grpcio from PyPI), with generic handlers (no generated code).

    python3 grpc_peer.py server PORT
    python3 grpc_peer.py client PORT [TRACEPARENT]

Service demo.v1.Catalog: GetItem answers OK, Lookup answers NOT_FOUND. The client waits for a
line on stdin, calls GetItem (with `traceparent` metadata when given) and Lookup once each, and
prints one JSON line per call with the status code.
"""
import json
import sys
from concurrent import futures

import grpc

mode, port = sys.argv[1], int(sys.argv[2])


def get_item(request, context):
    return b"item:" + request


def lookup(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, "no such item")


if mode == "server":
    handler = grpc.method_handlers_generic_handler("demo.v1.Catalog", {
        "GetItem": grpc.unary_unary_rpc_method_handler(get_item),
        "Lookup": grpc.unary_unary_rpc_method_handler(lookup),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()
else:
    traceparent = sys.argv[3] if len(sys.argv) > 3 else None
    print("ready", flush=True)
    sys.stdin.readline()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        for method, meta in (("GetItem", traceparent), ("Lookup", None)):
            call = channel.unary_unary(f"/demo.v1.Catalog/{method}")
            metadata = (("traceparent", meta),) if meta else None
            try:
                call(b"42", metadata=metadata, timeout=10)
                code = "OK"
            except grpc.RpcError as e:
                code = e.code().name
            print(json.dumps({"method": method, "code": code}), flush=True)
    print("done", flush=True)
