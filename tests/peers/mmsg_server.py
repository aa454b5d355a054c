"""A TCP echo server that moves its bytes with recvmmsg(2) and sendmmsg(2), through ctypes:
calls the agent does not read, whose bytes it must count as lost rather than drop silently.

Usage: mmsg_server.py PORT. Prints "ready" once listening; serves one connection at a time."""
import ctypes
import socket
import sys

libc = ctypes.CDLL(None, use_errno=True)


class Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class Msghdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.POINTER(Iovec)),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", Msghdr), ("len", ctypes.c_uint)]


def one_message(buf, n):
    """An mmsghdr of one iovec over the first n bytes of buf (kept alive by the caller)."""
    iov = Iovec(ctypes.cast(buf, ctypes.c_void_p), n)
    msg = Mmsghdr()
    msg.hdr.iov = ctypes.pointer(iov)
    msg.hdr.iovlen = 1
    return msg, iov


def serve(conn):
    fd = conn.fileno()
    buf = ctypes.create_string_buffer(4096)
    while True:
        msg, _iov = one_message(buf, len(buf))
        if libc.recvmmsg(fd, ctypes.byref(msg), 1, 0, None) != 1 or msg.len == 0:
            return
        reply, _reply_iov = one_message(buf, msg.len)
        if libc.sendmmsg(fd, ctypes.byref(reply), 1, 0) != 1:
            return


def main():
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", int(sys.argv[1])))
    listener.listen()
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        with conn:
            serve(conn)


if __name__ == "__main__":
    main()
