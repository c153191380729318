"""Real local HTTP servers for backend tests: a scripted OpenAI-compatible server and a
fault-injecting proxy.

``FaultProxy`` sits between a client and any server (the scripted one, or a real
llama.cpp / vLLM server) and, per request, follows a schedule of faults:
``"429"`` / ``"500"`` (an error status), ``"hang"`` (hold the connection open past
the client's timeout), ``"truncate"`` (a 200 whose JSON body is cut in half),
``"drop"`` (close the connection with no response), or ``None`` (forward
faithfully). Both bind 127.0.0.1 on a free port and stop cleanly.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


class _Server:
    """A ThreadingHTTPServer on 127.0.0.1:<free port> in a daemon thread."""

    def __init__(self, handler_cls):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_cls)
        self.httpd.daemon_threads = True
        self.httpd.owner = self
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        return False


class ScriptedOpenAIServer(_Server):
    """Deterministic /v1/completions and /v1/chat/completions for client logic tests.

    The completion text is a function of (prompt, seed, choice index), so tests can
    check that degraded paths (repeated requests for ``n``) return the right samples.
    It records every request and the peak number of requests in flight.
    """

    def __init__(self, delay: float = 0.0, honour_n: bool = True, reply=None):
        super().__init__(_ScriptedHandler)
        self.delay, self.honour_n, self.reply = delay, honour_n, reply
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.in_flight = self.peak_in_flight = 0
        self.lock = threading.Lock()

    def answer(self, prompt, seed, index: int) -> str:
        """``reply(prompt, seed, index)`` if given (finishing with "stop"), else a hash of the three
        (finishing with "length" on /v1/completions)."""
        if self.reply is not None:
            return self.reply(prompt, seed, index)
        digest = hashlib.sha256(json.dumps([prompt, seed, index]).encode()).hexdigest()[:8]
        return f"ans-{digest}"


class _ScriptedHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

    def log_message(self, *args):
        pass

    def do_POST(self):
        srv: ScriptedOpenAIServer = self.server.owner
        if self.path not in ("/v1/completions", "/v1/chat/completions"):
            data = json.dumps({"error": {"message": f"no route {self.path}"}}).encode()
            self.send_response(404)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        with srv.lock:
            srv.requests.append(body)
            srv.headers.append(dict(self.headers))
            srv.in_flight += 1
            srv.peak_in_flight = max(srv.peak_in_flight, srv.in_flight)
        try:
            time.sleep(srv.delay)
            reply = self._reply(srv, body)
        finally:
            with srv.lock:
                srv.in_flight -= 1
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _reply(self, srv: ScriptedOpenAIServer, body: dict) -> dict:
        n = body.get("n", 1) if srv.honour_n else 1
        chat = self.path.endswith("/chat/completions")
        prompt = body.get("messages") if chat else body.get("prompt")
        choices = []
        for i in range(n):
            text = srv.answer(prompt, body.get("seed"), i)
            if chat:
                choices.append({"index": i, "message": {"role": "assistant", "content": text},
                                "finish_reason": "stop",
                                "logprobs": {"content": [{"token": text, "logprob": -0.5}]}})
            else:
                choices.append({"index": i, "text": text, "finish_reason": "stop" if srv.reply else "length",
                                "logprobs": {"tokens": [text], "token_logprobs": [-0.5]}})
        return {"choices": choices, "usage": {"prompt_tokens": 3, "completion_tokens": n}}


class FaultProxy(_Server):
    """Forward to ``upstream``, injecting the next scheduled fault on each request."""

    def __init__(self, upstream: str, schedule: list | Callable[[int], str | None] = (), hang_seconds: float = 5.0):
        super().__init__(_ProxyHandler)
        self.upstream, self.hang_seconds = upstream.rstrip("/"), hang_seconds
        self.schedule = schedule
        self.count = 0
        self.lock = threading.Lock()
        self.log: list[str | None] = []

    def next_fault(self) -> str | None:
        with self.lock:
            i = self.count
            self.count += 1
        if callable(self.schedule):
            fault = self.schedule(i)
        else:
            fault = self.schedule[i] if i < len(self.schedule) else None
        self.log.append(fault)
        return fault


class _ProxyHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        proxy: FaultProxy = self.server.owner
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        fault = proxy.next_fault()
        if fault in ("429", "500", "503"):
            return self._send(int(fault), json.dumps({"error": {"message": f"injected {fault}"}}).encode(),
                              {"retry-after": "0"} if fault == "429" else {})
        if fault == "hang":
            time.sleep(proxy.hang_seconds)
            return self._send(504, b'{"error": "hung"}')
        if fault == "drop":
            self.close_connection = True
            self.connection.close()
            return None
        status, data = self._forward(proxy, body)
        if fault == "truncate":
            data = data[: len(data) // 2]
        return self._send(status, data)

    def _forward(self, proxy: FaultProxy, body: bytes) -> tuple[int, bytes]:
        req = urllib.request.Request(proxy.upstream + self.path, data=body, method="POST",
                                     headers={"content-type": "application/json",
                                              **({"authorization": self.headers["authorization"]}
                                                 if self.headers.get("authorization") else {})})
        try:
            with urllib.request.urlopen(req, timeout=600) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def _send(self, status: int, data: bytes, headers: dict | None = None):
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
