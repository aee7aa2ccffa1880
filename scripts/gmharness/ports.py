"""Loopback ports: picking a free one, waiting for a listener, and telling whose listener it is
(from /proc: a port picked by free_port() may be taken by another process before ours binds)."""

import os
import socket
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} not listening")


def listener_inodes(port, host="127.0.0.1"):
    """Socket inodes of the TCP sockets LISTENing on host:port (IPv4), from /proc/net/tcp."""
    want = "%s:%04X" % ("".join("%02X" % int(b) for b in reversed(host.split("."))), port)
    out = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[1] == want and fields[3] == "0A":  # 0A: TCP_LISTEN
                out.add(int(fields[9]))
    return out


def _socket_inodes(pid):
    out = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(int(link[8:-1]))
    return out


def owns_listener(pid, port, host="127.0.0.1"):
    """Whether process `pid` holds a socket listening on host:port. A port picked by free_port()
    and then bound by a child process may have been taken meanwhile by another test's server: an
    answer on the port alone does not say it is ours."""
    inodes = listener_inodes(port, host)
    return bool(inodes and inodes & _socket_inodes(pid))


def listener_pids(port, host="127.0.0.1"):
    """The processes holding a socket listening on host:port."""
    inodes = listener_inodes(port, host)
    if not inodes:
        return set()
    return {int(p) for p in os.listdir("/proc") if p.isdigit() and inodes & _socket_inodes(p)}
