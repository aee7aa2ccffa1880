"""HTTP clients for nginx on loopback: raw requests, keep-alive and pipelined connections with a
minimal response parser (fixed request sequences for instruction counting, fast fills), and
concurrent http.client traffic."""

import socket
import threading


def request_bytes(path, headers=None, method="GET", body=b""):
    h = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    for k, v in (headers or {}).items():
        h.append(f"{k}: {v}")
    if body or method in ("POST", "PUT"):
        h.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(h) + "\r\n\r\n").encode() + body


class Conn:
    """One keep-alive HTTP/1.1 connection with a minimal response parser (Content-Length or
    chunked bodies, which is all nginx sends here). Sends requests pipelined or one by one."""

    def __init__(self, port, timeout=120):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def close(self):
        self.sock.close()

    def _fill(self):
        b = self.sock.recv(1 << 20)
        if not b:
            raise ConnectionError("connection closed by nginx")
        self.buf += b

    def read_head(self):
        """Reads a response head: (status, header lines after the status line)."""
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            self._fill()
        head = bytes(self.buf[:end])
        del self.buf[:end + 4]
        lines = head.split(b"\r\n")
        return int(lines[0].split(b" ", 2)[1]), lines[1:]

    def read_response(self, want_header=None, keep_body=True):
        """Reads one response: (status, body or length, value of `want_header`)."""
        status, lines = self.read_head()
        length = 0
        hv = None
        chunked = False
        for l in lines:
            k, _, v = l.partition(b":")
            kl = k.strip().lower()
            if kl == b"content-length":
                length = int(v)
            elif kl == b"transfer-encoding" and b"chunked" in v.lower():
                chunked = True
            elif want_header and kl == want_header:
                hv = v.strip().decode()
        if chunked:
            return status, b"".join(self.body_chunked()), hv
        if not keep_body:
            # Discards the body as it arrives (big /metrics pages).
            for _ in self.body(length):
                pass
            return status, length, hv
        while len(self.buf) < length:
            self._fill()
        body = bytes(self.buf[:length])
        del self.buf[:length]
        return status, body, hv

    def body(self, left):
        """Streams the next `left` body bytes."""
        while left > 0:
            if self.buf:
                piece = bytes(self.buf[:left])
                del self.buf[:len(piece)]
            else:
                piece = self.sock.recv(min(left, 1 << 22))
                if not piece:
                    raise ConnectionError("connection closed mid-body")
            left -= len(piece)
            yield piece

    def body_chunked(self):
        """Streams a chunked body (the page rendered in slices has no Content-Length)."""
        while True:
            while b"\r\n" not in self.buf:
                self._fill()
            i = self.buf.find(b"\r\n")
            size = int(bytes(self.buf[:i]).split(b";")[0], 16)
            del self.buf[:i + 2]
            yield from self.body(size)
            while len(self.buf) < 2:
                self._fill()
            del self.buf[:2]
            if size == 0:
                return

    def request(self, raw, want_header=None, keep_body=True):
        self.sock.sendall(raw)
        return self.read_response(want_header, keep_body)

    def pipeline(self, raws, batch=256, want_header=None):
        """Sends `raws` in pipelined batches; returns (status counts, header value counts)."""
        statuses, values = {}, {}
        for i in range(0, len(raws), batch):
            chunk = raws[i:i + batch]
            self.sock.sendall(b"".join(chunk))
            for _ in chunk:
                st, _, hv = self.read_response(want_header)
                statuses[st] = statuses.get(st, 0) + 1
                if want_header:
                    values[hv] = values.get(hv, 0) + 1
        return statuses, values


def sequential(port, raws):
    """Sends requests one at a time over one keep-alive connection (a fixed, deterministic
    sequence, for instruction counting). Returns the number of 200 responses."""
    c = Conn(port)
    ok = 0
    try:
        for raw in raws:
            st, _, _ = c.request(raw)
            ok += st == 200
    finally:
        c.close()
    return ok


def pipeline_many(port, raws, conns=1, batch=256, want_header=None):
    """Pipelined requests spread over `conns` connections (threads); returns aggregated
    (status counts, header value counts)."""
    parts = [raws[i::conns] for i in range(conns)]
    results = [None] * conns
    errors = []

    def run(i):
        try:
            c = Conn(port)
            try:
                results[i] = c.pipeline(parts[i], batch, want_header)
            finally:
                c.close()
        except Exception as e:  # reported below
            errors.append(e)

    ts = [threading.Thread(target=run, args=(i,)) for i in range(conns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]
    st, hv = {}, {}
    for s, v in results:
        for k, n in s.items():
            st[k] = st.get(k, 0) + n
        for k, n in v.items():
            hv[k] = hv.get(k, 0) + n
    return st, hv


def run_concurrent(port, requests, threads=16, timeout=30, bodies=False):
    """Sends `requests` (tuples (method, path, headers, body)) over `threads` keep-alive
    http.client connections, request i on connection i % threads. Returns a list of
    (status, headers) — (status, headers, body) with `bodies` — in the order of `requests`;
    raises if any request failed."""
    import http.client
    from concurrent.futures import ThreadPoolExecutor

    results = [None] * len(requests)

    def worker(t):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            for i in range(t, len(requests), threads):
                method, path, headers, body = requests[i]
                conn.request(method, path, body=body, headers=headers or {})
                resp = conn.getresponse()
                data = resp.read()
                results[i] = (resp.status, dict(resp.headers)) + ((data,) if bodies else ())
        finally:
            conn.close()

    with ThreadPoolExecutor(threads) as ex:
        for f in [ex.submit(worker, t) for t in range(threads)]:
            f.result()
    return results


def raw_request(port, data, timeout=30):
    """Sends raw bytes (a complete request, normally with `Connection: close`) and reads the
    response until the server closes. Returns (status, header bytes, body bytes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    return status, head, body


def bound_get(source, port, path):
    """GET `path` from the source address `source` (all of 127.0.0.0/8 is loopback on Linux),
    e.g. to check an allow/deny list; returns the status."""
    with socket.socket() as s:
        s.settimeout(10)
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        raw = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            raw += chunk
    return int(raw.split(b" ", 2)[1])
