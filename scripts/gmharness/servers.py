"""Upstreams for nginx to proxy to: scripts/mock_llm.py (the LLM APIs) in a process of its own,
and in-process loopback servers (Gate holds requests until released)."""

import os
import re
import socket
import subprocess
import threading

from . import env


class MockLLM:
    """scripts/mock_llm.py on a free port (or on `port`)."""

    def __init__(self, *args, port=0):
        self.proc = subprocess.Popen(
            ["python3", os.path.join(env.ROOT, "scripts/mock_llm.py"), "--port", str(port), "--quiet",
             *args],
            stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        m = re.search(r":(\d+)\s*$", line)
        assert m, f"mock did not start: {line!r}"
        self.port = int(m.group(1))

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class LoopbackServer:
    """A TCP server on a free loopback port serving each connection in a thread of its own:
    subclasses define _serve(conn) and call start() once their state is set."""

    def __init__(self, backlog=512):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.port = self.sock.getsockname()[1]

    def start(self):
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()


class Gate(LoopbackServer):
    """An HTTP upstream on a free loopback port that holds every request until release(). A test
    that needs requests in flight waits for them (wait_arrived, or a gauge) instead of racing a
    fixed upstream delay that a loaded machine can outrun. Answers 200 with a small JSON body and
    `Connection: close`; hold() makes it hold the requests that arrive from then on."""

    BODY = b'{"object":"gate"}'

    def __init__(self):
        super().__init__()
        self.cond = threading.Condition()
        self.arrived = 0        # requests read so far
        self.released = False
        self.releases = 0       # release() calls: a request held before one is answered
        self.closed = False
        self.start()

    def _serve(self, c):
        try:
            with c:
                c.settimeout(300)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = c.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = re.search(rb"\r\ncontent-length:[ \t]*(\d+)", head, re.I)
                while length and len(body) < int(length.group(1)):
                    chunk = c.recv(65536)
                    if not chunk:
                        return
                    body += chunk
                with self.cond:
                    self.arrived += 1
                    self.cond.notify_all()
                    seen = self.releases
                    self.cond.wait_for(lambda: self.released or self.releases != seen
                                       or self.closed)
                    if self.closed:
                        return
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                          % (len(self.BODY), self.BODY))
        except OSError:
            pass  # nginx gave up on the request (client gone, timeout, worker killed)

    def wait_arrived(self, n, timeout=30.0):
        """Waits until `n` requests in all have arrived (and are held, unless released)."""
        with self.cond:
            if not self.cond.wait_for(lambda: self.arrived >= n, timeout):
                raise TimeoutError(f"gate: {self.arrived} of {n} requests arrived in {timeout}s")

    def release(self):
        """Answers the held requests, and the next ones at once."""
        with self.cond:
            self.released = True
            self.releases += 1
            self.cond.notify_all()

    def hold(self):
        with self.cond:
            self.released = False

    def close(self):
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept()
        except OSError:
            pass
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
