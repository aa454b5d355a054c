"""A threaded HTTPS service (Python's ssl, so OpenSSL through libssl).

    python3 tls_service.py PORT CERT KEY [--downstream PORT] [--late]

GET /PATH answers 200 (404 for paths starting with /missing). With --downstream, each request
first calls https://localhost:DOWNSTREAM/PATH over one keep-alive connection per handler thread,
checking the certificate against CERT. With --late, nothing that loads libssl is imported until
a line arrives on stdin: the library is loaded after the agent started. Prints "ready" when
listening.
"""
import sys

port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
args = sys.argv[4:]
downstream = int(args[args.index("--downstream") + 1]) if "--downstream" in args else None
if "--late" in args:
    print("waiting", flush=True)
    sys.stdin.readline()

# Deliberately after the wait: http.server imports http.client, which imports ssl.
import http.client  # noqa: E402
import ssl  # noqa: E402
import threading  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402

local = threading.local()
client_ctx = ssl.create_default_context(cafile=cert)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if downstream:
            if not hasattr(local, "conn"):
                local.conn = http.client.HTTPSConnection("localhost", downstream, context=client_ctx)
            local.conn.request("GET", self.path)
            local.conn.getresponse().read()
        body = f"tls {self.path}".encode()
        self.send_response(404 if self.path.startswith("/missing") else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()
