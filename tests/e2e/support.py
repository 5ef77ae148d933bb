"""Helpers for the hookd end-to-end suite: hookd processes, webhook receivers, raw API calls."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional, Union

import pytest
from svix.api import Svix, SvixOptions

REPO_ROOT = Path(__file__).resolve().parents[2]
E2E_DIR = Path(__file__).resolve().parent

# The Svix SDK reads the part of a token after its last "." as a region name,
# so the token contains no ".".
ADMIN_TOKEN = "e2e-admin-token-0123456789"

HOOKD_START_TIMEOUT_SECONDS = 20.0
HOOKD_STOP_TIMEOUT_SECONDS = 10.0

# Default delivery settings for a test instance: one quick retry and a short
# request timeout, so failing deliveries settle within a few seconds.
DEFAULT_HOOKD_ENV = {
    "HOOKD_ALLOWED_NETWORKS": "127.0.0.1/32",
    "HOOKD_RETRY_SCHEDULE": "1s",
    "HOOKD_REQUEST_TIMEOUT": "2s",
}


def postgres_admin_url() -> Optional[str]:
    """Return HOOKD_E2E_POSTGRES_URL: with it, every hookd runs on a database of its own there."""
    return os.environ.get("HOOKD_E2E_POSTGRES_URL") or None


def run_psql(admin_url: str, sql: str) -> None:
    """Run one SQL statement on the PostgreSQL server with psql."""
    subprocess.run(
        ["psql", admin_url, "--no-psqlrc", "--quiet", "-v", "ON_ERROR_STOP=1", "-c", sql],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def database_url(admin_url: str, name: str) -> str:
    """Return `admin_url` with its database replaced by `name`."""
    parts = urllib.parse.urlsplit(admin_url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))


def hookd_binary() -> Path:
    return Path(os.environ.get("HOOKD_BIN", REPO_ROOT / "target" / "release" / "hookd"))


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------
# hookd processes
# ---------------------------------------------------------------------------


class HookdInstance:
    """One hookd data directory, served by one `hookd serve` process at a time."""

    def __init__(self, binary: Path, data_dir: Path, env: dict[str, str]) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.env = dict(env)
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self.port: Optional[int] = None
        self.process: Optional[subprocess.Popen[bytes]] = None

    @property
    def base_url(self) -> str:
        assert self.port is not None, "hookd is not running"
        return f"http://127.0.0.1:{self.port}"

    def client(self, token: str = ADMIN_TOKEN) -> Svix:
        """Return a Svix SDK client for this instance, without SDK-side retries."""
        return Svix(token, SvixOptions(server_url=self.base_url, retry_schedule=[]))

    def start(self) -> None:
        assert self.process is None, "hookd is already running"
        self.port = free_port()
        env = {
            **os.environ,
            **self.env,
            "HOOKD_LISTEN": f"127.0.0.1:{self.port}",
            "HOOKD_DATA_DIR": str(self.data_dir),
            "HOOKD_ADMIN_TOKEN": ADMIN_TOKEN,
        }
        with self.log_path.open("ab") as log:
            log.write(f"--- starting {self.binary} serve on port {self.port}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [str(self.binary), "serve"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_until_healthy()

    def _wait_until_healthy(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + HOOKD_START_TIMEOUT_SECONDS
        last_error = "no response"
        while time.monotonic() < deadline:
            exit_code = self.process.poll()
            if exit_code is not None:
                self.process = None
                raise RuntimeError(
                    f"hookd exited with code {exit_code} before GET /health answered; "
                    f"its output is in {self.log_path}"
                )
            try:
                with urllib.request.urlopen(f"{self.base_url}/health", timeout=1) as response:
                    if response.status == 200:
                        return
                    last_error = f"status {response.status}"
            except urllib.error.HTTPError as error:
                last_error = f"status {error.code}"
            except OSError as error:
                last_error = str(error)
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"hookd did not answer GET /health with 200 within {HOOKD_START_TIMEOUT_SECONDS}s "
            f"(last result: {last_error}); its output is in {self.log_path}"
        )

    def stop(self) -> Optional[int]:
        """Send SIGTERM, kill the process if it outlives the timeout, and return its exit code."""
        process = self.process
        if process is None:
            return None
        self.process = None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                return process.wait(timeout=HOOKD_STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                with self.log_path.open("ab") as log:
                    log.write(b"--- hookd ignored SIGTERM and was killed\n")
        return process.returncode

    def restart(self, extra_env: Optional[dict[str, str]] = None) -> None:
        """Stop hookd and start it again on the same data directory, on a new port."""
        self.stop()
        if extra_env:
            self.env.update(extra_env)
        self.start()

    def read_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log file)"


class HookdPool:
    """Starts hookd instances, each on a fresh data directory under `base_dir`, and stops them all."""

    def __init__(self, base_dir: Path, active: list[HookdInstance]) -> None:
        self.base_dir = base_dir
        self.instances: list[HookdInstance] = []
        # Databases created for the instances, dropped by stop_all.
        self.databases: list[str] = []
        # Instances whose logs are attached to the report of a failing test.
        self._active = active

    def start(self, env: Optional[dict[str, str]] = None) -> HookdInstance:
        """Start hookd with DEFAULT_HOOKD_ENV updated by `env`."""
        binary = hookd_binary()
        if not binary.is_file():
            pytest.fail(
                f"hookd binary not found at {binary}: build it with `cargo build --release` "
                "or set HOOKD_BIN to its path"
            )
        data_dir = self.base_dir / f"hookd-{len(self.instances)}"
        data_dir.mkdir()
        instance_env = {**DEFAULT_HOOKD_ENV, **(env or {})}
        admin_url = postgres_admin_url()
        if admin_url is not None:
            name = f"hookd_e2e_{os.getpid()}_{int(time.time() * 1000)}_{len(self.instances)}"
            run_psql(admin_url, f"CREATE DATABASE {name}")
            self.databases.append(name)
            instance_env["HOOKD_DATABASE_URL"] = database_url(admin_url, name)
        instance = HookdInstance(binary, data_dir, instance_env)
        self.instances.append(instance)
        self._active.append(instance)
        instance.start()
        return instance

    __call__ = start

    def stop_all(self) -> None:
        for instance in self.instances:
            instance.stop()
            self._active.remove(instance)
        admin_url = postgres_admin_url()
        for name in self.databases:
            if admin_url is not None:
                run_psql(admin_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        self.databases.clear()


# ---------------------------------------------------------------------------
# Webhook receivers
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTP request as a receiver saw it."""

    method: str
    path: str
    headers: dict[str, str]
    """Header names lowercased; a repeated header keeps its values joined by ", "."""
    body: bytes
    """The request body exactly as received, after removing chunked transfer coding."""
    arrived_at: float
    """time.monotonic() when the request body had been read."""

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")

    @property
    def signatures(self) -> list[str]:
        return self.headers.get("webhook-signature", "").split()


@dataclass(frozen=True)
class Respond:
    """Respond with `status` and `body` after waiting `delay` seconds."""

    status: int = 200
    delay: float = 0.0
    body: bytes = b"ok"


@dataclass(frozen=True)
class Hang:
    """Send no response and hold the request until the receiver stops."""


Behaviour = Union[Respond, Hang]


@dataclass
class Receiver:
    """A ThreadingHTTPServer on 127.0.0.1 that records every request it gets.

    Each request takes the next queued behaviour (see `respond_with`), or
    `default` once the queue is empty.
    """

    name: str
    default: Behaviour = field(default_factory=Respond)
    _server: Optional[ThreadingHTTPServer] = None
    _thread: Optional[threading.Thread] = None
    _queued: list[Behaviour] = field(default_factory=list)
    _requests: list[RecordedRequest] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)
    _stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """The endpoint URL to register in hookd for this receiver."""
        return f"http://127.0.0.1:{self.port}/hooks/{self.name}"

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._changed:
            return list(self._requests)

    def respond_with(self, *behaviours: Behaviour, default: Optional[Behaviour] = None) -> None:
        """Respond to the next requests with `behaviours`, one each, and then with `default`."""
        with self._changed:
            self._queued = list(behaviours)
            if default is not None:
                self.default = default

    def wait_for_requests(self, count: int, timeout: float = 15.0) -> list[RecordedRequest]:
        """Wait until at least `count` requests have arrived and return all of them."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self._requests) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pytest.fail(
                        f"receiver {self.name} got {len(self._requests)} requests "
                        f"within {timeout:.1f}s, expected at least {count}"
                    )
                self._changed.wait(remaining)
            return list(self._requests)

    def wait_for_webhook_ids(
        self, webhook_ids: set[str], timeout: float
    ) -> list[RecordedRequest]:
        """Wait until requests carrying every id in `webhook_ids` have arrived."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                missing = webhook_ids - {request.webhook_id for request in self._requests}
                if not missing:
                    return list(self._requests)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pytest.fail(
                        f"receiver {self.name} is missing {len(missing)} of "
                        f"{len(webhook_ids)} deliveries after {timeout:.1f}s, "
                        f"for example webhook-id {sorted(missing)[0]}"
                    )
                self._changed.wait(remaining)

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Idle keep-alive connections are closed after this many seconds.
            timeout = 30

            def do_POST(self) -> None:
                receiver._handle(self)

            do_GET = do_PUT = do_PATCH = do_DELETE = do_POST

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"receiver-{self.name}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = _read_body(handler)
        headers: dict[str, str] = {}
        for name, value in handler.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        recorded = RecordedRequest(
            method=handler.command,
            path=handler.path,
            headers=headers,
            body=body,
            arrived_at=time.monotonic(),
        )
        with self._changed:
            self._requests.append(recorded)
            behaviour = self._queued.pop(0) if self._queued else self.default
            self._changed.notify_all()

        if isinstance(behaviour, Hang):
            self._stopping.wait()
            handler.close_connection = True
            return
        if behaviour.delay > 0 and self._stopping.wait(behaviour.delay):
            handler.close_connection = True
            return
        handler.send_response(behaviour.status)
        handler.send_header("Content-Type", "text/plain")
        handler.send_header("Content-Length", str(len(behaviour.body)))
        handler.end_headers()
        handler.wfile.write(behaviour.body)


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size_line = handler.rfile.readline()
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                # Skip trailer fields up to the empty line that ends the message.
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    length = int(handler.headers.get("Content-Length", "0"))
    return handler.rfile.read(length)


class ReceiverPool:
    """Starts webhook receivers and stops them all."""

    def __init__(self) -> None:
        self.receivers: list[Receiver] = []

    def start(self, name: str = "hook", default: Optional[Behaviour] = None) -> Receiver:
        """Start a receiver at URL path /hooks/`name` that responds with `default`, or 200 if it is None."""
        receiver = Receiver(name=name, default=default or Respond())
        receiver.start()
        self.receivers.append(receiver)
        return receiver

    __call__ = start

    def stop_all(self) -> None:
        for receiver in self.receivers:
            receiver.stop()


# ---------------------------------------------------------------------------
# Raw HTTP access to the hookd API, for requests the SDK cannot express
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RawResponse:
    status: int
    content_type: Optional[str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


def raw_request(
    instance: HookdInstance,
    method: str,
    path: str,
    body: Optional[bytes] = None,
    headers: Optional[dict[str, str]] = None,
    token: Optional[str] = ADMIN_TOKEN,
) -> RawResponse:
    """Send `body` byte for byte to the hookd API and return the response."""
    request_headers = {"Content-Type": "application/json", **(headers or {})}
    if token is not None:
        request_headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        f"{instance.base_url}{path}", data=body, method=method, headers=request_headers
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return RawResponse(
                response.status, response.headers.get("Content-Type"), response.read()
            )
    except urllib.error.HTTPError as error:
        return RawResponse(error.code, error.headers.get("Content-Type"), error.read())
