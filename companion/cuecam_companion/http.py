"""A small HTTP/1.1 client over asyncio streams (MicroPython's asyncio and CPython's alike):
one request per connection, answers capped. HTTPS encrypts but does not check the board's
certificate: the board's answer is authenticated by its HMAC (core.Companion.confirmed_by_board),
which a certificate would add nothing to for this purpose."""

import asyncio

MAX_ANSWER = 8192
MAX_HEADERS = 40


class SocketTransport:
    def __init__(self, max_answer=MAX_ANSWER):
        self.max_answer = max_answer

    async def request(self, board, method, path, headers, body, timeout_ms):
        """(status, headers with lowercase names, body); OSError or TimeoutError on failure."""
        return await asyncio.wait_for(self._request(board, method, path, headers, body), timeout_ms / 1000)

    def _ssl(self, board):
        if board.scheme != "https":
            return None
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if hasattr(ctx, "check_hostname"):
            ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx

    async def _request(self, board, method, path, headers, body):
        reader, writer = await asyncio.open_connection(board.host, board.port, ssl=self._ssl(board))
        try:
            host = "[%s]" % board.host if ":" in board.host else board.host
            head = "%s %s HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\nContent-Length: %d\r\n" % (
                method, path, host, board.port, len(body))
            for k, v in headers.items():
                head += "%s: %s\r\n" % (k, v)
            writer.write(head.encode() + b"\r\n" + body)
            await writer.drain()
            line = await reader.readline()
            parts = line.split(None, 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
                raise OSError("not an HTTP answer: %r" % line[:40])
            status = int(parts[1].decode())
            answer = {}
            for _ in range(MAX_HEADERS):
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                k, _, v = line.decode().partition(":")
                answer[k.strip().lower()] = v.strip()
            else:
                raise OSError("too many headers")
            n = int(answer.get("content-length", "0"))
            if not 0 <= n <= self.max_answer:
                raise OSError("answer of %d bytes is over the cap" % n)
            data = await reader.readexactly(n) if n else b""
            return status, answer, data
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except Exception:  # the connection is done either way
                pass
