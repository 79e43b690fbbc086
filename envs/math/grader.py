"""Answer extraction and grading for the math env (env end of the data flow).

The math env turns a model reply into a reward here: an *extractor* pulls the final
answer out of the reply (by default the last ``\\boxed{...}``), then math-verify judges
whether it is equivalent to the reference (``\\frac{1}{2}`` = ``0.5``, ``x=3`` = ``3``,
``{69, 84}`` = ``84, 69``).

Grading must never raise on model output and must end in bounded time. math-verify
bounds its own parsing/verification with ``signal.alarm``, which only works in the main
thread of a process. So :func:`grade` runs math-verify in-process (with its signal
timeouts) in a main thread, and in any other thread (a Ray actor's thread, a thread-pool
rollout) sends the work to a helper subprocess that it kills and restarts when it
overruns. Either way a timeout counts as wrong, never as an exception.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from agent_rl.registry import Registry

log = logging.getLogger(__name__)

Extractor = Callable[[str], "str | None"]

# name → function(reply text) → final answer text, or None when the reply has none.
EXTRACTORS: Registry[Extractor] = Registry("answer extractor")

# What the env appends to each problem so the model knows the extractor's format.
EXTRACTOR_INSTRUCTIONS: dict[str, str] = {
    "boxed": "Please reason step by step, and put your final answer within \\boxed{}.",
    "hash": "Please reason step by step, and end with a line '#### <answer>'.",
    "answer_is": "Please reason step by step, and end with 'The answer is <answer>.'",
    "last_number": "Please reason step by step; the last number you write is your answer.",
}

# A final answer this long is not a final answer; parsing it could take seconds.
MAX_ANSWER_CHARS = 1000

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*")


def _braced(text: str, start: int) -> str | None:
    """The content of the ``{...}`` group opening at ``text[start]``; None if unbalanced."""
    depth, i = 0, start
    while i < len(text):
        c = text[i]
        if c == "\\":  # \{, \} and \\ are escapes, not grouping
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
        i += 1
    return None


@EXTRACTORS.register("boxed")
def extract_boxed(text: str) -> str | None:
    """The last ``\\boxed{...}`` (or ``\\fbox{...}``, or ``\\boxed 5``) in ``text``."""
    # Only the last few: each unbalanced `\boxed{` scans to the end, so all of them could be quadratic.
    for m in list(_BOX_RE.finditer(text))[-20:][::-1]:
        end = m.end()
        if end < len(text) and text[end] == "{":
            inner = _braced(text, end)
        else:  # `\boxed 5`: TeX's one-token argument
            tok = re.match(r"[^\s${}\\]+", text[end:])
            inner = tok.group(0) if tok and m.group(0) != m.group(0).rstrip() else None
        if inner is not None and inner.strip():
            return inner.strip()
    return None


@EXTRACTORS.register("hash")
def extract_hash(text: str) -> str | None:
    """GSM8K style: the text after the last ``####``."""
    idx = text.rfind("####")
    if idx < 0:
        return None
    line = text[idx + 4 :].strip().splitlines()
    return (line[0].strip() or None) if line else None


_ANSWER_IS_RE = re.compile(r"(?:answer is|answer:)\s*(.+?)(?:\.\s|\.?$|\n)", re.IGNORECASE | re.DOTALL)


@EXTRACTORS.register("answer_is")
def extract_answer_is(text: str) -> str | None:
    """``The answer is X`` / ``Answer: X`` (the last one); a boxed answer inside wins."""
    matches = list(_ANSWER_IS_RE.finditer(text))
    if not matches:
        return None
    found = matches[-1].group(1).strip()
    span = _MATH_SPAN_RE.match(found)  # "is $3$, not $5$": the first math span, not the text up to the last "$"
    if span:
        found = next(g for g in span.groups() if g is not None)
    found = found.strip()
    return extract_boxed(found) or found or None


_MATH_SPAN_RE = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)


_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")


@EXTRACTORS.register("last_number")
def extract_last_number(text: str) -> str | None:
    """The last number (``-12``, ``1,000``, ``3.5``, ``7/2``) in ``text``."""
    nums = _NUMBER_RE.findall(text)
    return nums[-1].rstrip(",") if nums else None


def get_extractor(extractor: str | Extractor) -> Extractor:
    return extractor if callable(extractor) else EXTRACTORS.get(extractor)


@dataclass(frozen=True)
class Grade:
    """The verdict on one reply. ``valid`` is False when no final answer could be extracted."""

    correct: bool
    extracted: str | None
    timed_out: bool = False
    error: str | None = None

    @property
    def valid(self) -> bool:
        return self.extracted is not None


# ---------------------------------------------------------------- math-verify calls


_MATH_DELIM_RE = re.compile(r"(?<!\\)\$|\\\(|\\\[")  # an unescaped $, or \( or \[


def _as_latex(answer: str) -> str:
    """Wrap an answer in math delimiters so math-verify's LaTeX extractor reads all of it."""
    delimited = _MATH_DELIM_RE.search(answer) is not None
    return answer if delimited else f"${answer}$"


def _verify(extracted: str, reference: str, timeout_s: int | None) -> bool:
    """math-verify's judgement. ``timeout_s`` uses SIGALRM (main thread only); None = unbounded."""
    from math_verify import parse, verify

    gold = _parse_gold(reference, timeout_s)
    if not gold:
        raise ValueError(f"math-verify could not parse the reference answer {reference!r}")
    # `$...$`, not `\boxed{...}`: math-verify 0.9 reads `\boxed{50\%}` as an unparsed string.
    pred = parse(_as_latex(extracted), parsing_timeout=timeout_s)
    if not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=timeout_s))


_GOLD: dict[tuple[str, int | None], tuple] = {}  # parsed references (a process's envs share them)


def _parse_gold(reference: str, timeout_s: int | None) -> list:
    """math-verify's parse of a reference answer, cached when it succeeds. An empty parse is not cached:
    math-verify returns [] on a parse timeout too (a busy machine), and one timeout must not make a problem
    ungradable for the rest of the run."""
    key = (reference, timeout_s)
    if key not in _GOLD:
        from math_verify import parse

        parsed = tuple(parse(_as_latex(reference), parsing_timeout=timeout_s))
        if not parsed:
            return []
        if len(_GOLD) >= 4096:
            _GOLD.pop(next(iter(_GOLD)))  # the oldest
        _GOLD[key] = parsed
    return list(_GOLD[key])


def unparseable_references(problems, timeout_s: int = 5) -> list[int]:
    """Indices of ``problems`` whose reference answer math-verify cannot parse (they can never be graded
    correct). Parses are cached by reference, so envs of one process share the work (~1-4 s per benchmark)."""
    bad = []
    for i, p in enumerate(problems):
        try:
            if not _parse_gold(p.answer, timeout_s if _in_main_thread() else None):
                bad.append(i)
        except Exception:  # sympy/antlr fail in many ways on odd input: unparseable
            bad.append(i)
    return bad


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGALRM")


def _grade_inprocess(extracted: str, reference: str, timeout_s: float) -> Grade:
    from math_verify.errors import TimeoutException

    # signal.alarm takes whole seconds; round up so a 0.5 s budget is not "no timeout".
    secs = max(1, int(-(-timeout_s // 1)))
    start = time.monotonic()
    try:
        correct = _verify(extracted, reference, secs)
        # math-verify catches its own timeouts and answers False; the clock tells us it did.
        if not correct and time.monotonic() - start >= secs:
            return Grade(False, extracted, timed_out=True, error=f"grading took over {secs} s")
        return Grade(correct, extracted)
    except (TimeoutException, TimeoutError):
        return Grade(False, extracted, timed_out=True, error=f"math-verify took over {secs} s")
    except Exception as exc:  # sympy/antlr fail in many ways on odd input; a crash is a wrong answer
        return Grade(False, extracted, error=f"{type(exc).__name__}: {exc}"[:500])


# ---------------------------------------------------------------- subprocess guard


class _GraderProcess:
    """A helper process that runs math-verify in its own main thread (so its signal timeouts
    work) and that the caller can kill when it overruns. One request at a time."""

    STARTUP_TIMEOUT_S = 120.0  # importing sympy + antlr on a loaded 2-core box

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._owner_pid = os.getpid()

    def _start(self) -> subprocess.Popen:
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        env.setdefault("OMP_NUM_THREADS", "1")
        proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "envs.math.grader", "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            text=True,
            encoding="utf-8",
        )
        line = self._readline(proc, self.STARTUP_TIMEOUT_S)
        if not line or line.strip() != "ready":
            proc.kill()
            proc.wait()
            raise RuntimeError(
                f"the math grader subprocess ({sys.executable} -m envs.math.grader --serve) did not start "
                f"within {self.STARTUP_TIMEOUT_S:.0f} s (got {line!r}); check that math-verify imports in this "
                "Python, or grade from the main thread"
            )
        return proc

    @staticmethod
    def _readline(proc: subprocess.Popen, timeout_s: float) -> str | None:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
        if not ready:
            return None
        return proc.stdout.readline()  # "" when the process died

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def grade(self, extracted: str, reference: str, timeout_s: float) -> Grade:
        with self._lock:
            if os.getpid() != self._owner_pid:
                # A forked copy: the helper and its pipes belong to the parent; talking to it
                # from here would interleave two processes' requests. Start our own.
                self._proc, self._owner_pid = None, os.getpid()
            try:
                if self._proc is None or self._proc.poll() is not None:
                    self._proc = self._start()
                assert self._proc.stdin is not None
                self._proc.stdin.write(json.dumps({"extracted": extracted, "reference": reference,
                                                   "timeout_s": timeout_s}) + "\n")
                self._proc.stdin.flush()
                # The worker bounds itself with signals; this outer bound catches what they miss
                # (a C extension holding the interpreter, a wedged worker).
                line = self._readline(self._proc, 3 * max(1.0, timeout_s) + 2.0)
            except (OSError, ValueError) as exc:
                self._kill()
                return Grade(False, extracted, error=f"grader subprocess died or failed ({exc}); restarting it")
            if line is None:
                self._kill()
                return Grade(False, extracted, timed_out=True, error=f"grading took over {timeout_s} s")
            if not line:
                code = self._proc.wait()
                self._proc = None
                return Grade(False, extracted, error=f"grader subprocess died (exit code {code}); restarting it")
            reply = json.loads(line)
            return Grade(reply["correct"], extracted, timed_out=reply["timed_out"], error=reply["error"])

    def close(self) -> None:
        with self._lock:
            if os.getpid() == self._owner_pid:
                self._kill()


_workers: list[_GraderProcess] = []
_local = threading.local()


def _thread_worker() -> _GraderProcess:
    worker = getattr(_local, "worker", None)
    if worker is None:
        worker = _local.worker = _GraderProcess()
        _workers.append(worker)
    return worker


@atexit.register
def close_grader_processes() -> None:
    for worker in _workers:
        worker.close()


def _serve() -> None:
    """The subprocess side: one JSON request per line on stdin, one JSON verdict per line out."""
    import math_verify  # noqa: F401  (import before saying ready, so startup cost is not a timeout)

    logging.disable(logging.WARNING)  # math-verify logs each timeout; the parent reports it
    print("ready", flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        g = _grade_inprocess(req["extracted"], req["reference"], float(req["timeout_s"]))
        print(json.dumps({"correct": g.correct, "timed_out": g.timed_out, "error": g.error}), flush=True)


# ---------------------------------------------------------------- public API


def grade(
    response: str,
    reference: str,
    *,
    extractor: str | Extractor = "boxed",
    timeout_s: float = 5.0,
    mode: str = "auto",
) -> Grade:
    """Judge a model reply against a reference answer. Never raises on any reply text.

    ``mode``: ``"inprocess"`` (math-verify's signal timeouts; main thread only),
    ``"subprocess"`` (a per-thread helper process, killed on overrun), or ``"auto"``
    (in-process in the main thread, subprocess elsewhere).
    """
    if mode not in ("auto", "inprocess", "subprocess"):
        raise ValueError(f"grade mode must be 'auto', 'inprocess' or 'subprocess', got {mode!r}")
    if not isinstance(response, str):
        raise TypeError(f"the reply to grade must be a str, got {type(response).__name__}")
    extract = get_extractor(extractor)  # an unknown name is a config error: raise it
    try:
        extracted = extract(response)
        if extracted is not None and not isinstance(extracted, str):
            raise TypeError(f"extractor returned {type(extracted).__name__}, expected str or None")
    except Exception as exc:  # a user extractor's bug must not end a rollout
        return Grade(False, None, error=f"extractor failed: {type(exc).__name__}: {exc}"[:500])
    if extracted is None:
        return Grade(False, None)
    if len(extracted) > MAX_ANSWER_CHARS:
        return Grade(False, extracted, error=f"final answer longer than {MAX_ANSWER_CHARS} characters")
    in_main = _in_main_thread()
    if mode == "inprocess" and not in_main:
        raise RuntimeError(
            "grade(mode='inprocess') needs the main thread (math-verify times out with SIGALRM); "
            "use mode='auto' or 'subprocess' in worker threads"
        )
    if mode == "subprocess" or (mode == "auto" and not in_main):
        return _thread_worker().grade(extracted, reference, timeout_s)
    return _grade_inprocess(extracted, reference, timeout_s)


def is_equivalent(answer: str, reference: str, *, timeout_s: float = 5.0) -> bool:
    """Whether a bare final answer (no ``\\boxed``) equals the reference."""
    return grade(f"\\boxed{{{answer}}}", reference, timeout_s=timeout_s).correct


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    _serve()
