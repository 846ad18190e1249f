"""An ASGI app served on a free loopback port in a background thread: fake endpoints for tests and demos.

```
with serve_app(app) as base:      # base = "http://127.0.0.1:<port>"; the server stops when the block ends
    Endpoint(base + "/v1", "m").create(...)
```
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def serve_app(app: Any, start_timeout_s: float = 20.0) -> Iterator[str]:
    """Serve `app` with uvicorn on 127.0.0.1 until the block ends; yields its base URL."""
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + start_timeout_s
    while not server.started and time.time() < deadline and thread.is_alive():
        time.sleep(0.05)
    if not server.started:
        server.should_exit = True
        raise RuntimeError(f"the loopback server on port {port} did not start within {start_timeout_s:.0f} s")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
