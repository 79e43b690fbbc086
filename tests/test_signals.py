"""SIGTERM runs finally blocks (agent_rl.signals), so a killed run closes its engines and workers."""

from __future__ import annotations

import subprocess
import sys
import time

SCRIPT = """
import sys, time
from agent_rl.signals import exit_on_sigterm
exit_on_sigterm()
try:
    print("ready", flush=True)
    time.sleep(60)
finally:
    open(sys.argv[1], "w").write("closed")
"""


def test_sigterm_runs_finally_blocks(tmp_path):
    marker = tmp_path / "closed"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(marker)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.terminate()
    assert proc.wait(timeout=30) == 143
    assert marker.read_text() == "closed"


def test_without_it_finally_blocks_are_skipped(tmp_path):  # why the handler exists
    marker = tmp_path / "closed"
    script = SCRIPT.replace("exit_on_sigterm()\n", "")
    proc = subprocess.Popen([sys.executable, "-c", script, str(marker)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.terminate()
    assert proc.wait(timeout=30) == -15
    time.sleep(0.1)
    assert not marker.exists()
