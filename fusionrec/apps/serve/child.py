"""The serving API as a child process (``fusionrec serve``), for tests and benchmarks: started on a free loopback
port with the given settings, waited for until ``/livez`` answers, stopped by its PID."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

from fusionrec.contracts.settings import Settings
from fusionrec.infra.child import CliChild
from fusionrec.infra.stack import free_port

__all__ = ["ServerChild"]


class ServerChild(CliChild):
    """``fusionrec serve`` in a child process; ``url`` is its base URL, its output goes to ``log_path``."""

    grace_s = 15.0

    def __init__(self, settings: Settings, log_path: Path, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        address = {"FUSIONREC_API_HOST": "127.0.0.1", "FUSIONREC_API_PORT": str(self.port)}
        super().__init__("serve", settings, log_path, address | env)

    def wait_live(self, timeout: float = 60.0) -> ServerChild:
        """Wait until ``/livez`` answers; raise if the server exits or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fusionrec serve exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.url}/livez", timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"fusionrec serve did not answer in {timeout:.0f}s; see {self.log_path}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> ServerChild:
        return self.wait_live()

    def __exit__(self, *exc: object) -> None:
        self.stop()
