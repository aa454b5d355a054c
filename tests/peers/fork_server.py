"""Forking HTTP servers, the way pre-fork servers (gunicorn, nginx, Apache) work.

    python3 fork_server.py prefork PORT N      # N workers forked at start share the listener
    python3 fork_server.py per-request PORT    # one child per connection

Workers answer `HTTP/1.1 200` with a Content-Length. Per-request children answer in HTTP/1.0
without a Content-Length (the response ends when the connection does) and then exit at once,
without closing the socket themselves: only the process's exit ends the connection.
"""
import os
import signal
import socket
import sys

mode, port = sys.argv[1], int(sys.argv[2])
listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", port))
listener.listen(64)


def read_request(conn):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return None
        data += chunk
    return data.split(b" ")[1].decode()


def worker():
    while True:
        conn, _ = listener.accept()
        path = read_request(conn)
        if path is not None:
            body = f"worker {os.getpid()} {path}\n".encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))
        conn.close()


if mode == "prefork":
    children = []
    for _ in range(int(sys.argv[3])):
        pid = os.fork()
        if pid == 0:
            worker()
        children.append(pid)
    print("ready", " ".join(map(str, children)), flush=True)
    try:
        signal.sigwait([signal.SIGTERM, signal.SIGINT])
    finally:
        for c in children:
            os.kill(c, signal.SIGKILL)
else:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        if os.fork() == 0:
            listener.close()
            path = read_request(conn)
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nchild %d %s\n"
                         % (os.getpid(), path.encode()))
            os._exit(0)
        conn.close()
