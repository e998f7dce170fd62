"""The grader worker is scoped: nothing starts or registers at import, the subprocess starts on the
first risky answer, ``close()`` (or ``with``) stops it, and atexit knows it only while it runs."""

from __future__ import annotations

import subprocess
import sys

from ivr.rewards.grader_worker import GraderWorker


def test_import_and_common_grading_start_nothing() -> None:
    code = (
        "import atexit\n"
        "ours = []  # callbacks registered by ivr (other libraries register their own at import)\n"
        "register = atexit.register\n"
        "def spy(fn, *a, **k):\n"
        "    if getattr(fn, '__module__', '').startswith('ivr'):\n"
        "        ours.append(fn)\n"
        "    return register(fn, *a, **k)\n"
        "atexit.register = spy\n"
        "unregister = atexit.unregister\n"
        "def unspy(fn):\n"
        "    ours.remove(fn)\n"
        "    return unregister(fn)\n"
        "atexit.unregister = unspy\n"
        "import ivr.rewards.grader_worker as g\n"
        "from ivr.rewards import accuracy_reward\n"
        "assert not ours, 'atexit registered at import'\n"
        "assert g._SHARED is None, 'a worker object at import'\n"
        "assert accuracy_reward(['\\\\boxed{\\\\frac{1}{2}}'], answer=['0.5']) == [1.0]\n"
        "assert g._SHARED is None, 'the common path reached the worker'\n"
        "assert accuracy_reward(['\\\\boxed{\\\\binom{4}{2}}'], answer=['6']) == [1.0]\n"
        "assert g._SHARED is not None and g._SHARED._proc is not None\n"
        "assert ours == [g._SHARED.close], ours\n"
        "g.close_shared_worker()\n"
        "assert g._SHARED._proc is None and not ours\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_close_and_context_manager_stop_the_subprocess() -> None:
    with GraderWorker() as worker:
        assert worker._proc is None and not worker._exit_hook  # lazy: nothing yet
        assert worker.grade("3", "a. 3", 5.0) is True  # started on first use
        proc = worker._proc
        assert proc is not None and worker._exit_hook
    assert worker._proc is None and not worker._exit_hook and proc.poll() is not None
    # a closed worker starts again on the next grade, and close() is idempotent
    assert worker.grade("6", "\\binom{4}{2}", 5.0) is True
    worker.close()
    worker.close()
    assert worker._proc is None
