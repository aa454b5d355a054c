"""One service of a chain, in threaded Python (ThreadingHTTPServer: a thread per connection).

    python3 chain.py PORT [NEXT_URL]

GET /chain?id=N calls NEXT_URL/chain?id=N (when given) and answers 200 with the downstream
status; GET /fanout?id=N calls NEXT_URL twice (leg=1, leg=2). Outbound calls share a small pool
of keep-alive connections, so one connection carries calls made for different inbound requests.

The service is not instrumented: it propagates nothing, unless the query says so:
mode=forward copies the incoming traceparent/tracestate/b3 headers unchanged, and
mode=propagate sends the incoming trace id with a new span id (as an instrumented app would).
"""
import http.client
import os
import queue
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

PORT = int(sys.argv[1])
NEXT = urlsplit(sys.argv[2]) if len(sys.argv) > 2 else None
POOL = queue.LifoQueue()
FORWARDED = ("traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid",
             "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags")


def call(path, headers):
    try:
        conn = POOL.get_nowait()
    except queue.Empty:
        conn = http.client.HTTPConnection(NEXT.hostname, NEXT.port, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        resp.read()
        POOL.put(conn)
        return resp.status
    except Exception:
        conn.close()
        return 599


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def outbound_headers(self, mode):
        if mode == "forward":
            return {k: v for k, v in self.headers.items() if k.lower() in FORWARDED}
        tp = self.headers.get("traceparent")
        if mode == "propagate" and tp:
            version, trace, _parent, flags = tp.split("-")[:4]
            return {"traceparent": f"{version}-{trace}-{os.urandom(8).hex()}-{flags}"}
        return {}

    def do_GET(self):
        url = urlsplit(self.path)
        q = parse_qs(url.query)
        mode = q.get("mode", [""])[0]
        status = 200
        if NEXT is not None and url.path == "/chain":
            status = call(f"/chain?{url.query}", self.outbound_headers(mode))
        elif NEXT is not None and url.path == "/fanout":
            for leg in (1, 2):
                s = call(f"/chain?{url.query}&leg={leg}", self.outbound_headers(mode))
                status = max(status, s)
        elif url.path not in ("/chain", "/fanout"):
            status = 404
        body = f"{url.path} {status}\n".encode()
        self.send_response(200 if status < 500 else 502)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()
