"""A ``fusionrec`` command in a child process: the settings passed in its environment (and nothing of the caller's
``FUSIONREC_*``), its output in a log file, stopped by its PID. The worker's and the serving API's children
(:class:`fusionrec.streams.child.WorkerChild`, :class:`fusionrec.apps.serve.child.ServerChild`) are two of them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from fusionrec.contracts.settings import Settings

__all__ = ["CliChild"]


class CliChild:
    """``fusionrec COMMAND`` with ``settings`` (plus ``env``) in its environment, its output in ``log_path``."""

    #: Seconds :meth:`stop` waits after SIGTERM before SIGKILL.
    grace_s = 20.0

    def __init__(self, command: str, settings: Settings, log_path: Path, env: dict[str, str]):
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FUSIONREC_")}
        self.env |= settings.to_env() | env
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fusionrec.apps.cli", command],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, sig: int = signal.SIGTERM, grace: float | None = None) -> int | None:
        """Signal the process and wait (SIGKILL after ``grace``, default :attr:`grace_s`); return its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(self.grace_s if grace is None else grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode
