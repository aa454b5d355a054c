"""A threaded HTTP service that reads PostgreSQL and Redis while serving each request.

    python3 db_service.py HTTP_PORT PG_PORT REDIS_PORT

GET /item/N runs one SELECT on PostgreSQL and one GET on Redis, on the handler's thread, with
one connection per handler thread (as a pool would), then answers 200. Prints "ready".
"""
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg2
import redis

http_port, pg_port, redis_port = (int(a) for a in sys.argv[1:4])
local = threading.local()


def connections():
    if not hasattr(local, "pg"):
        local.pg = psycopg2.connect(host="127.0.0.1", port=pg_port, user="postgres", dbname="shop")
        local.pg.autocommit = True
        local.redis = redis.Redis(host="127.0.0.1", port=redis_port)
    return local.pg, local.redis


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        n = int(self.path.rsplit("/", 1)[-1])
        pg, cache = connections()
        with pg.cursor() as cur:
            cur.execute("SELECT %s::int + 1 AS next", (n,))
            (value,) = cur.fetchone()
        cache.get(f"item:{n}")
        body = str(value).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", http_port), Handler)
print("ready", flush=True)
server.serve_forever()
