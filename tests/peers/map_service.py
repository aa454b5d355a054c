"""One service of the service-map chain, in threaded Python, uninstrumented.

    python3 map_service.py PORT NEXT_URL        # calls NEXT_URL/users/N
    python3 map_service.py PORT --pg PG_PORT    # the last one: reads PostgreSQL

GET /users/N: a middle service calls the next one with the same path and answers 502 when it
failed; the last service runs one SELECT on PostgreSQL (database "shop", one shared connection)
and answers 500 when N is a multiple of 5 (the injected failure), else 200. Prints "ready".
"""
import http.client
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

PORT = int(sys.argv[1])
NEXT = urlsplit(sys.argv[2]) if sys.argv[2] != "--pg" else None
PG_PORT = int(sys.argv[3]) if NEXT is None else None
LOCK = threading.Lock()
local = threading.local()
pg = None
if PG_PORT is not None:
    import psycopg2

    pg = psycopg2.connect(host="127.0.0.1", port=PG_PORT, user="postgres", dbname="shop")
    pg.autocommit = True


def downstream(path):
    if not hasattr(local, "conn"):
        local.conn = http.client.HTTPConnection(NEXT.hostname, NEXT.port, timeout=10)
    try:
        local.conn.request("GET", path)
        resp = local.conn.getresponse()
        resp.read()
        return resp.status
    except Exception:
        local.conn.close()
        del local.conn
        return 599


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = urlsplit(self.path).path
        parts = path.strip("/").split("/")
        if len(parts) != 2 or parts[0] != "users" or not parts[1].isdigit():
            status = 404
        elif NEXT is not None:
            status = 502 if downstream(path) >= 500 else 200
        else:
            n = int(parts[1])
            with LOCK, pg.cursor() as cur:
                cur.execute("SELECT name FROM users WHERE id = %s", (n,))
                cur.fetchall()
            status = 500 if n % 5 == 0 else 200
        body = f"{path} {status}\n".encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if PG_PORT is not None:
    with pg.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS users (id int PRIMARY KEY, name text)")
server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
print("ready", flush=True)
server.serve_forever()
