"""Start ``eco-guard serve`` as a child process and wait until it answers.

Lives with the benchmarks (tests import it through ``tests.conftest.benchmark_module``),
not in the package: it is test and benchmark plumbing. Tests and the load benchmark need a real server process (a real socket, a real
SIGTERM/SIGKILL) on a free loopback port; this is the one place that knows how.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn_server(
    guard_dir: Path | str | Sequence[Path | str],
    *,
    audit: Path,
    log: Path,
    extra_args: Sequence[str] = (),
    port: int | None = None,
    startup_timeout_s: float = 300.0,
) -> tuple[subprocess.Popen[bytes], str]:
    """Run ``eco-guard serve`` (stderr to ``log``) and return ``(process, base_url)`` once
    ``/healthz`` says ok; raise ``RuntimeError`` with the log's tail if it never does.

    ``guard_dir`` is one ``--guard`` value (``DIR`` or ``NAME=DIR``) or a list of them."""
    import httpx

    port = port or free_port()
    exe = Path(sys.executable).with_name("eco-guard")
    specs = [guard_dir] if isinstance(guard_dir, (str, Path)) else list(guard_dir)
    cmd = [str(exe), "serve", *(a for g in specs for a in ("--guard", str(g))), "--port", str(port), "--audit", str(audit), *extra_args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + startup_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"eco-guard serve exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    proc.wait(30)
    raise RuntimeError(f"eco-guard serve did not come up in {startup_timeout_s:g} s:\n{log.read_text(errors='replace')[-3000:]}")
