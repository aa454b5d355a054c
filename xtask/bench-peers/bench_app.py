"""The "realistic service" of the benchmark: a Flask app served by waitress (a production WSGI
server, 8 threads) that, per request, calls a second service over HTTP (a keep-alive session
per thread) and reads Redis.

    python3 bench_app.py front PORT BACKEND_PORT REDIS_PORT
    python3 bench_app.py back PORT

Flask, requests and redis-py are what OpenTelemetry's Python auto-instrumentation instruments,
so the same app runs bare, under the agent, and under `opentelemetry-instrument`.
"""
import sys
import threading

from flask import Flask

app = Flask(__name__)
mode, port = sys.argv[1], int(sys.argv[2])

if mode == "front":
    import redis
    import requests

    backend, redis_port = int(sys.argv[3]), int(sys.argv[4])
    local = threading.local()

    def clients():
        if not hasattr(local, "http"):
            local.http = requests.Session()
            local.redis = redis.Redis(host="127.0.0.1", port=redis_port)
        return local.http, local.redis

    @app.route("/item/<int:item>")
    def item(item):
        http, cache = clients()
        price = http.get(f"http://127.0.0.1:{backend}/price/{item}", timeout=5).text
        stock = cache.get(f"stock:{item}") or b"0"
        return f"item {item} price {price} stock {stock.decode()}\n"

else:

    @app.route("/price/<int:item>")
    def price(item):
        return str(item * 3)


if __name__ == "__main__":
    import waitress

    print("ready", flush=True)
    waitress.serve(app, host="127.0.0.1", port=port, threads=8, _quiet=True)
