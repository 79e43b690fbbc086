"""SIGTERM ends a CLI run the way Ctrl-C does (entry points of train, sft and eval).

Python's default SIGTERM action kills the process at once, without running ``finally`` blocks, so
``kill <pid>`` of an eval or training run left its vLLM engine processes (``VLLM::EngineCore`` and
``VLLM::Worker``: gigabytes of memory and busy cores each) and env workers running as orphans. Raising
SystemExit instead lets every ``finally: policy.close()`` / ``pool.close()`` shut them down.
"""

from __future__ import annotations

import signal
import sys
import threading


def exit_on_sigterm() -> None:
    """Turn SIGTERM into ``SystemExit(143)`` in the main thread (a no-op elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def _handler(signum, _frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills at once
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, _handler)
