"""The grader worker: one subprocess that runs math-verify on risky answers and is killed when it
overruns its time bound (why: ``expression.py``'s module docstring).

Scoped, not global: importing this module starts nothing and registers nothing. The process's
shared ``GraderWorker`` object is created on first use (``shared_worker()``), its subprocess on
the first risky grade, and an ``atexit`` hook is registered only once a subprocess has actually
been started. ``close()`` (or ``with GraderWorker() as w:``, or ``close_shared_worker()``) stops
it now; a later grade starts a fresh one.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

logger = logging.getLogger(__name__)

_STARTUP_TIMEOUT_S = 30.0
_RETRY_BROKEN_S = 60.0


class GraderWorker:
    """One persistent subprocess that runs math-verify and is killed when it overruns.

    Started lazily with ``subprocess.Popen`` (fork+exec: safe from threaded parents, and it
    never re-imports the user's ``__main__`` as multiprocessing's spawn would). Requests are
    JSON lines on stdin, answers ``1``/``0`` lines on stdout, read with ``select`` so that the
    wait has a deadline. A fork of the parent never talks to its parent's worker.

    No subprocess until the first ``grade``/``warm_up``; ``close()`` stops it (``with`` does it on
    exit) and a later call starts a new one. The ``atexit`` hook that closes it is registered when
    a subprocess is started and removed by ``close()``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner = -1
        self._ready = False
        self._buf = b""
        self._broken_until = 0.0
        self._exit_hook = False  # self.close registered with atexit (a subprocess was started)

    def _start(self) -> None:
        root = str(Path(__file__).resolve().parents[2])  # the directory that holds `ivr`
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from ivr.rewards.grader_worker import worker_main; worker_main()",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            bufsize=0,
        )
        self._owner, self._ready, self._buf = os.getpid(), False, b""
        if not self._exit_hook:
            atexit.register(self.close)
            self._exit_hook = True

    def _kill(self) -> None:
        if self._proc is not None and self._owner == os.getpid():
            self._proc.kill()
            self._proc.wait()
        self._proc, self._ready, self._buf = None, False, b""

    def _readline(self, deadline: float) -> bytes | None:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        poller = select.poll()  # not select.select: it fails for fds >= 1024
        poller.register(fd, select.POLLIN)
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(remaining * 1000.0):
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return None  # the worker died
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.strip()

    def _ensure_ready(self) -> bool:
        if self._proc is not None:
            if self._owner != os.getpid():  # inherited through a fork: not ours to use
                self._proc, self._ready, self._buf = None, False, b""
            elif self._proc.poll() is not None:
                self._kill()
        if self._proc is None:
            if time.monotonic() < self._broken_until:
                return False
            try:
                self._start()
            except OSError:
                self._broken_until = time.monotonic() + _RETRY_BROKEN_S
                logger.warning("ivr grader worker could not start; risky answers grade as 0")
                return False
        if not self._ready:
            if self._readline(time.monotonic() + _STARTUP_TIMEOUT_S) != b"ready":
                self._kill()
                self._broken_until = time.monotonic() + _RETRY_BROKEN_S
                logger.warning("ivr grader worker failed to start; risky answers grade as 0")
                return False
            self._ready = True
        return True

    def warm_up(self) -> bool:
        """Start the worker now (tests, benchmarks); True when it is ready."""
        with self._lock:
            return hasattr(select, "poll") and self._ensure_ready()

    def grade(
        self, gold: str, pred: str, timeout_s: float, *, latex_only: bool = False
    ) -> bool | None:
        """True/False, or None when the bound was hit or no worker is available."""
        if not hasattr(select, "poll") or not self._lock.acquire(timeout=max(timeout_s, 0.0)):
            return None
        try:
            if not self._ensure_ready():
                return None
            assert self._proc is not None and self._proc.stdin is not None
            request = {"gold": gold, "pred": pred, "latex_only": latex_only}
            self._proc.stdin.write((json.dumps(request) + "\n").encode())
            line = self._readline(time.monotonic() + timeout_s)
            if line is None:  # overran: kill it and pre-launch the next one
                self._kill()
                self._start()
                return None
            return line == b"1"
        except (OSError, ValueError):
            self._kill()
            return None
        finally:
            self._lock.release()

    def close(self) -> None:
        """Stop the subprocess now (idempotent); the next grade starts a fresh one."""
        with self._lock:
            self._kill()
            if self._exit_hook:
                atexit.unregister(self.close)
                self._exit_hook = False

    def __enter__(self) -> GraderWorker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


_SHARED: GraderWorker | None = None
_SHARED_LOCK = threading.Lock()


def shared_worker() -> GraderWorker:
    """The worker every grader of this process uses, created on first call (no subprocess yet:
    that starts with the first risky answer). Tests and benchmarks ``warm_up()`` it."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = GraderWorker()
        return _SHARED


def close_shared_worker() -> None:
    """Stop the shared worker's subprocess now (e.g. before forking many processes, or at the end
    of a job); a later risky grade starts a new one. No-op when none was ever created."""
    if _SHARED is not None:
        _SHARED.close()


def worker_main() -> None:
    """Entry point of the grader subprocess: JSON requests in, ``1``/``0`` out."""
    from ivr.rewards.expression import _parse_cached, _verify_unbounded

    logging.disable(logging.CRITICAL)
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints from libraries must not corrupt the protocol
    _parse_cached("1")
    out.write("ready\n")
    for line in sys.stdin:
        try:
            req = json.loads(line)
            gold, pred, latex_only = str(req["gold"]), str(req["pred"]), bool(req["latex_only"])
            ok = bool(_verify_unbounded(gold, pred, latex_only=latex_only))
        except Exception:
            ok = False
        out.write("1\n" if ok else "0\n")
