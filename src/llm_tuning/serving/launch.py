"""`llm-tuning serve`: bind the port, load the models, start the batching worker, run uvicorn until Ctrl-C."""

from __future__ import annotations

import ipaddress
import socket
import sys

import uvicorn

from ..errors import UserError
from .app import build_app
from .batching import Batcher
from .models import ModelRegistry

LOOPBACK = "127.0.0.1"


def run_server(
    config=None,
    overrides=(),
    adapters=(),
    host: str = LOOPBACK,
    port: int = 8000,
    api_key: str | None = None,
    max_queue: int = 256,
    max_batch: int = 32,
    threads: int | None = None,
) -> None:
    """Serve the base model of `config` (or of the runs in `adapters`) and each run, until interrupted."""
    limits = (("--port", port, 0), ("--max-queue", max_queue, 1), ("--max-batch", max_batch, 1), ("--threads", threads, 1))
    for name, value, low in limits:
        if value is not None and (value < low or (name == "--port" and value > 65535)):
            raise UserError(f"{name} {value} is out of range")
    listener = bind(host, port)  # first: a port in use fails at once, not after the model has loaded
    try:
        registry = ModelRegistry(config, overrides, adapters)
        batcher = Batcher(registry, max_batch=max_batch, max_queue=max_queue, threads=threads)
        app = build_app(registry, batcher, api_key=api_key)
        host_shown, port = listener.getsockname()[:2]
        say(f"serving {', '.join(registry.served)} at http://{_url_host(host_shown)}:{port}/v1 (Ctrl-C stops)")
        say(exposure(host, api_key))
        batcher.start()
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
        server.run(sockets=[listener])
    finally:
        listener.close()


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as e:
        listener.close()
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}; choose another --port or --host") from None
    listener.listen(2048)
    listener.set_inheritable(True)
    return listener


def exposure(host: str, api_key: str | None) -> str:
    """What the address means for who can reach the server."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback:
        return "only this machine can connect (loopback); --host 0.0.0.0 accepts other machines"
    if api_key:
        return f"listening on {host}: other machines can connect, with the API key"
    return f"warning: listening on {host} without --api-key: anyone who can reach this machine can use the model"


def say(message: str) -> None:
    print(f"[llm-tuning] {message}", file=sys.stderr, flush=True)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
