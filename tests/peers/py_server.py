"""Threaded HTTP/1.1 test server (keep-alive) with a few routes the end-to-end tests call."""
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _send(self, status, body, chunked=False):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (body[: len(body) // 2], body[len(body) // 2 :]):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def do_GET(self):
        path = self.path.split("?")[0]
        if path == "/hello":
            self._send(200, b"hello world")
        elif path == "/fail":
            self._send(500, b"boom")
        elif path == "/chunked":
            self._send(200, b"x" * 10000, chunked=True)
        elif path == "/big":
            self._send(200, b"y" * 200000)
        else:
            self._send(404, b"not found")

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        self._send(201, body)


class PeekingServer(ThreadingHTTPServer):
    """Looks at each connection's first bytes without taking them, as proxies' protocol
    inspectors do (Envoy's tls_inspector and http_inspector, nginx on TLS listeners): once with
    recv and once with recvmsg, both MSG_PEEK. The bytes are then read again by the handler."""

    def finish_request(self, request, client_address):
        request.recv(8, socket.MSG_PEEK)
        request.recvmsg(16, 0, socket.MSG_PEEK)
        super().finish_request(request, client_address)


class DiscardingHandler(Handler):
    """Reads each head unbuffered (a byte a call, so no body bytes wait in a buffer) and throws
    each POST body away in the kernel with MSG_TRUNC: the bytes are taken from the socket and
    never copied to the process."""

    rbufsize = 0

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        got = 0
        while got < n:
            discarded = len(self.connection.recv(n - got, socket.MSG_TRUNC))
            if discarded == 0:
                return
            got += discarded
        self._send(201, b"discarded %d" % n)


if __name__ == "__main__":
    server_class = PeekingServer if "--peek" in sys.argv[2:] else ThreadingHTTPServer
    handler = DiscardingHandler if "--discard-bodies" in sys.argv[2:] else Handler
    server = server_class(("127.0.0.1", int(sys.argv[1])), handler)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()
