"""A stand-in for the Kubernetes API server: answers the requests the agent makes (list and
watch pods of one node, get a ReplicaSet) with recorded responses from tests/fixtures/k8s.

    python3 fake_kube_api.py PORT FIXTURE_DIR CONTAINER_ID [--deny]

CONTAINER_ID replaces ${CONTAINER_ID} in the fixtures. With --deny every request gets the 403
the API server sends when RBAC forbids it. Requests are logged on stdout, one per line.
"""
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

PORT, FIXTURES, CONTAINER_ID = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
DENY = "--deny" in sys.argv


def fixture(name):
    return (FIXTURES / name).read_text().replace("${CONTAINER_ID}", CONTAINER_ID).encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        url = urlsplit(self.path)
        q = parse_qs(url.query)
        print("GET", self.path, flush=True)
        if DENY:
            status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": 'pods is forbidden: User "system:serviceaccount:agent:agent" '
                                 'cannot list resource "pods" in API group "" at the cluster scope',
                      "reason": "Forbidden", "details": {"kind": "pods"}, "code": 403}
            return self.send(403, json.dumps(status).encode())
        if url.path == "/api/v1/pods" and q.get("watch") == ["true"]:
            # Nothing changes: hold the watch open like the API server does.
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            try:
                for _ in range(int(q.get("timeoutSeconds", ["60"])[0])):
                    time.sleep(1)
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass
            return
        if url.path == "/api/v1/pods":
            if q.get("fieldSelector") != ["spec.nodeName=node-1"]:
                return self.send(400, b'{"kind":"Status","code":400,"message":"unexpected selector"}')
            return self.send(200, fixture("pods.json"))
        if url.path == "/apis/apps/v1/namespaces/shop/replicasets/checkout-7d9f8b":
            return self.send(200, fixture("replicaset.json"))
        self.send(404, b'{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}')


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()
