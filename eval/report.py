"""Eval results from finished episodes (the eval end of the data flow: rollout → episodes → report).

* :class:`EpisodeLog` is ``episodes.jsonl``: one JSON line per finished episode, appended and
  flushed as it finishes, so an interrupted eval resumes where it stopped. A torn last line (a
  crash mid-write) is dropped and cut off the file; a damaged line elsewhere is an error.
* :func:`summarize` turns episode records into the results dict written to ``results.json``:
  success rate, per task type with a 95% Wilson interval, mean steps, invalid-action rate, loop rate
  (the share of episodes lost stuck on one action, :func:`agent_rl.types.is_loop`; where every record keeps
  its actions), pass@k (unbiased estimator of Chen et al. 2021, "Evaluating Large Language Models Trained
  on Code").
* :func:`write_results`, :func:`format_table` and :func:`metrics_from` write the JSON/CSV files,
  the console table and the ``eval/``-named metrics the trainer logs.

An episode record is a dict with at least ``task_index``, ``task_id``, ``task_type``, ``sample``,
``won``, ``steps``, ``invalid_actions``; see :func:`eval.tasks.episode_record`.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from agent_rl.types import is_loop

Z_95 = 1.959963984540054  # two-sided 95% normal quantile
EPISODES_FILE = "episodes.jsonl"
RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
REQUIRED_FIELDS = ("task_index", "task_id", "task_type", "sample", "won", "steps", "invalid_actions")
CSV_FIELDS = ("scope", "name", "tasks", "episodes", "successes", "success_rate", "ci95_low", "ci95_high")


class EpisodeLogError(ValueError):
    """episodes.jsonl cannot be read back (damaged before its last line, or another eval's file)."""


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0, 1) when there is no data.

    Unlike the normal interval it stays inside [0, 1] and is not degenerate at 0/n or n/n,
    which matters for small per-task-type counts (17-31 games each on valid_unseen).
    """
    if not 0 <= successes <= n:
        raise ValueError(f"wilson_interval needs 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At 0/n and n/n the bound is exactly 0 or 1; float noise must not make it 1 - 1e-16.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct: ``1 - C(n-c, k) / C(n, k)``.

    Computed as a product (Chen et al. 2021, Fig. 3) so large ``n`` does not overflow.
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def pass_k_values(samples: int) -> list[int]:
    """The k reported for ``samples`` samples per task: 1, 2, 4, ... up to and including ``samples``."""
    ks, k = [], 1
    while k < samples:
        ks.append(k)
        k *= 2
    return ks + [samples]


# ------------------------------------------------------------------------------------ episodes.jsonl


class EpisodeLog:
    """Append-only ``episodes.jsonl`` that survives interruption.

    ``EpisodeLog(path)`` reads back the finished episodes (``records``), cuts a torn last line
    off the file so the next append starts on a fresh line, and ``append`` writes one record,
    flushed and fsynced so a crash right after loses nothing already reported.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.dropped_torn_line = False
        self.records: list[dict[str, Any]] = self._read_back()
        self._file = None

    def done_keys(self) -> set[tuple[int, int]]:
        return {(int(r["task_index"]), int(r["sample"])) for r in self.records}

    def append(self, record: dict[str, Any]) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
        # ensure_ascii: a lone surrogate in a model's action (invalid UTF-8) is written as \udXXX, not a crash
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.records.append(record)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "EpisodeLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _read_back(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        # A complete file ends with "\n", so the last split piece is b"". Anything else is a torn write.
        tail = lines.pop()
        records, keep_bytes = [], len(raw) - len(tail)
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            records.append(self._parse(line, number))
        if tail.strip():
            try:  # a last line without its newline may still be whole (written by another tool)
                records.append(self._parse(tail, len(lines) + 1))
                keep_bytes = len(raw)
            except EpisodeLogError:
                self.dropped_torn_line = True
        if keep_bytes != len(raw):
            with open(self.path, "r+b") as f:  # drop the torn bytes so the next append is a clean line
                f.truncate(keep_bytes)
        if keep_bytes and not raw[:keep_bytes].endswith(b"\n"):
            with open(self.path, "ab") as f:
                f.write(b"\n")
        return records

    def _parse(self, line: bytes, number: int) -> dict[str, Any]:
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise EpisodeLogError(
                f"{self.path} line {number} is not valid JSON ({exc}): {line[:120]!r}. Only a torn last line "
                f"is skipped on resume; a damaged line before it means the file was edited or corrupted. "
                f"Delete that line (its episode is played again) or start over with another --out."
            ) from None
        missing = [k for k in REQUIRED_FIELDS if not isinstance(record, dict) or k not in record]
        if missing:
            raise EpisodeLogError(
                f"{self.path} line {number} lacks {missing}: it is not an agent-rl episode record "
                f"(got {str(record)[:120]}). Use an empty --out for a new eval."
            )
        wrong = [f"{k}={record[k]!r}" for k, typ in _FIELD_TYPES
                 if not isinstance(record[k], typ) or (typ is int and isinstance(record[k], bool))]
        if wrong:  # e.g. "won": "false" would count as a win
            raise EpisodeLogError(
                f"{self.path} line {number} has fields of the wrong type ({', '.join(wrong)}; won must be true/false, "
                f"the counts integers): it was not written by agent-rl. Delete that line (its episode is played "
                f"again) or use an empty --out."
            )
        return record


_FIELD_TYPES = (("won", bool), ("task_index", int), ("sample", int), ("steps", int), ("invalid_actions", int))


# ------------------------------------------------------------------------------------ results


def _group(records: list[dict[str, Any]], samples: int) -> dict[str, Any]:
    """Success counts of ``records`` with the Wilson interval over episodes and pass@k over tasks.

    With several samples per task the interval treats samples as independent draws (they are
    not: one task's samples correlate), so it is an approximation there; with one sample it is exact.
    """
    n = len(records)
    wins = sum(bool(r["won"]) for r in records)
    low, high = wilson_interval(wins, n)
    by_task: dict[int, list[bool]] = defaultdict(list)
    for r in records:
        by_task[int(r["task_index"])].append(bool(r["won"]))
    out: dict[str, Any] = {
        "tasks": len(by_task),
        "episodes": n,
        "successes": wins,
        "success_rate": wins / n if n else 0.0,
        "ci95": [low, high],
    }
    for k in pass_k_values(samples) if samples > 1 else []:
        scores = [pass_at_k(len(w), sum(w), k) for w in by_task.values() if len(w) >= k]
        out[f"pass@{k}"] = sum(scores) / len(scores) if scores else 0.0
    return out


def loop_rate(records: list[dict[str, Any]]) -> float | None:
    """The share of ``records`` lost in a loop (:func:`agent_rl.types.is_loop`); None where there are none or any
    lacks its ``actions`` (the expert's and random policy's records keep none): no made-up 0."""
    if not records or not all("actions" in r for r in records):
        return None
    return sum(is_loop(r["won"], r["actions"]) for r in records) / len(records)


def summarize(
    records: Iterable[dict[str, Any]], *, samples: int = 1, task_types: Iterable[str] = (), **extra: Any
) -> dict[str, Any]:
    """The ``results.json`` dict for finished episode records.

    ``success_rate`` is wins / episodes, which equals mean pass@1 when every task has the same
    number of samples. ``task_types`` lists types to report even with no episode (in that order
    first). ``extra`` keys (model, game-set stamp, versions, timing...) are copied in.
    """
    records = sorted(records, key=lambda r: (int(r["task_index"]), int(r["sample"])))
    overall = _group(records, samples)
    by_type: dict[str, list[dict[str, Any]]] = {t: [] for t in task_types}
    for r in records:
        by_type.setdefault(str(r["task_type"]), []).append(r)
    steps = sum(int(r["steps"]) for r in records)
    invalid = sum(int(r["invalid_actions"]) for r in records)
    errors = [r for r in records if r.get("error")]
    results: dict[str, Any] = {
        "success_rate": overall["success_rate"],
        "episodes": overall["episodes"],
        "tasks": overall["tasks"],
        "successes": overall["successes"],
        "ci95": overall["ci95"],
        "samples_per_task": samples,
        "mean_steps": steps / len(records) if records else 0.0,
        "invalid_action_rate": invalid / steps if steps else 0.0,
        "episodes_with_error": len(errors),
    }
    loops = loop_rate(records)
    if loops is not None:
        results["loop_rate"] = loops
    results.update({k: v for k, v in overall.items() if k.startswith("pass@")})
    results["per_task_type"] = {t: _group(rs, samples) for t, rs in by_type.items()}
    results.update(extra)
    return results


def metrics_from(results: dict[str, Any], prefix: str = "eval") -> dict[str, float]:
    """Flat ``eval/...`` metrics for a logger: ``eval/success_rate``, ``eval/<task_type>/success_rate``, ..."""
    metrics = {
        f"{prefix}/success_rate": float(results["success_rate"]),
        f"{prefix}/episodes": float(results["episodes"]),
        f"{prefix}/mean_steps": float(results["mean_steps"]),
        f"{prefix}/invalid_action_rate": float(results["invalid_action_rate"]),
    }
    for key in ("episodes_per_s", "loop_rate"):
        if key in results:
            metrics[f"{prefix}/{key}"] = float(results[key])
    for key, value in results.items():
        if key.startswith("pass@"):
            metrics[f"{prefix}/{key}"] = float(value)
    for task_type, group in results["per_task_type"].items():
        metrics[f"{prefix}/{task_type}/success_rate"] = float(group["success_rate"])
    return metrics


def csv_rows(results: dict[str, Any], scope: str = "task_type") -> list[dict[str, Any]]:
    """Rows for ``results.csv``: one for ``all`` and one per task type."""
    def row(scope_name: str, name: str, g: dict[str, Any]) -> dict[str, Any]:
        return {"scope": scope_name, "name": name, "tasks": g["tasks"], "episodes": g["episodes"],
                "successes": g["successes"], "success_rate": round(g["success_rate"], 6),
                "ci95_low": round(g["ci95"][0], 6), "ci95_high": round(g["ci95"][1], 6)}

    rows = [row("all", "all", results)]
    rows += [row(scope, name, g) for name, g in results["per_task_type"].items()]
    return rows


def write_results(out_dir: str | os.PathLike, results: dict[str, Any], rows: list[dict[str, Any]] | None = None) -> None:
    """Write ``results.json`` and ``results.csv`` atomically (a crash never leaves half a file)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / RESULTS_JSON, json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    rows = csv_rows(results) if rows is None else rows
    fields = list(CSV_FIELDS) + sorted({k for r in rows for k in r} - set(CSV_FIELDS))
    tmp = out / (RESULTS_CSV + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, out / RESULTS_CSV)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def format_table(rows: list[dict[str, Any]], title: str = "") -> str:
    """A fixed-width console table of ``csv_rows``-style rows (name, episodes, successes, rate, 95% CI)."""
    width = max([len(str(r["name"])) for r in rows] + [len("name")])
    head = f"{'name':<{width}}  {'episodes':>8}  {'wins':>6}  {'rate':>7}  {'95% CI (Wilson)':>17}"
    lines = [title] if title else []
    lines += [head, "-" * len(head)]
    for r in rows:
        ci = f"[{100 * r['ci95_low']:5.1f}, {100 * r['ci95_high']:5.1f}]"
        successes = r["successes"] if isinstance(r["successes"], int) else f"{r['successes']:.1f}"
        lines.append(f"{r['name']:<{width}}  {r['episodes']:>8}  {successes:>6}  "
                     f"{100 * r['success_rate']:6.1f}%  {ci:>17}")
    return "\n".join(lines)
