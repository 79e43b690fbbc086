"""The bench/ scripts as tests reach them: imported as modules (to call their functions) or run as a user runs
them, in a process of their own from the repository root."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_bench(name: str):
    """``bench/<name>.py`` imported as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_bench(name: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """``python bench/<name>.py ARGS`` from the repository root on 2 threads; its exit code and captured output."""
    return subprocess.run([sys.executable, str(ROOT / "bench" / f"{name}.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS="2"))


def readme_commands(script: str) -> list[list[str]]:
    """Every README code-block line that runs ``bench/<script>`` (line continuations joined, comments cut), split
    as a shell would, from the script path on."""
    text = (ROOT / "README.md").read_text()
    lines = "\n".join(re.findall(r"```bash\n(.*?)```", text, flags=re.S)).replace("\\\n", " ").splitlines()
    return [shlex.split(l.split(" #", 1)[0].split(f"bench/{script}", 1)[1]) for l in lines if f"bench/{script}" in l]
