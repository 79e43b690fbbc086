"""Metric sinks: console, JSONL (always) and wandb (offline by default).

Data flow: every stage's metrics (``rollout/``, ``loss/``, ``perf/``, ``eval/``) end here,
once per training step.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("agent_rl")

NAMESPACES = ("rollout/", "loss/", "perf/", "eval/", "train/", "sft/", "demos/", "heldout/")


class Tracker:
    def __init__(self, run_dir: Path, *, config: dict[str, Any], use_wandb: bool, wandb_mode: str = "offline",
                 project: str = "agent-rl", run_name: str | None = None, resume_id: str | None = None,
                 start_step: int | None = None):
        """``start_step``: the step training (re)starts from; rows of metrics.jsonl past it (logged after the
        checkpoint being resumed, or by a run whose checkpoints were removed) are dropped, so that no step is
        ever logged twice. None keeps every row."""
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "metrics.jsonl"
        if start_step is not None and path.is_file():
            _truncate_after(path, start_step)
        self.jsonl = open(path, "a", buffering=1)
        self.wandb_run = None
        if use_wandb and wandb_mode != "disabled":
            try:
                import wandb
            except ImportError:
                log.warning("wandb is not installed (pip install 'agent-rl[wandb]'): logging to console and JSONL only")
            else:
                os.environ.setdefault("WANDB_MODE", wandb_mode)
                self.wandb_run = wandb.init(
                    project=project, name=run_name, dir=str(self.run_dir), config=config, mode=wandb_mode,
                    id=resume_id, resume="allow" if resume_id else None,
                )
                self._warn_kept_wandb_steps(start_step)

    @property
    def wandb_id(self) -> str | None:
        return getattr(self.wandb_run, "id", None)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key in metrics:
            if not key.startswith(NAMESPACES):
                raise ValueError(f"metric {key!r} must be namespaced with one of {NAMESPACES}")
        values = {k: float(v) for k, v in metrics.items() if v is not None}
        # NaN/inf are logged, never dropped (they are how a diverging run shows); JSONL writes them as the
        # strings "nan", "inf", "-inf" so that every line stays strict JSON.
        row = {k: v if math.isfinite(v) else str(v) for k, v in values.items()}
        self.jsonl.write(json.dumps({"step": step, **row}) + "\n")
        # wandb drops a step below its own (with a warning per call): see _warn_kept_wandb_steps
        if self.wandb_run is not None and step >= self.wandb_run.step:
            self.wandb_run.log(values, step=step)

    def _warn_kept_wandb_steps(self, start_step: int | None) -> None:
        """A resumed wandb run (online) continues from the last step it holds. Steps the stopped attempt logged
        after the checkpoint being resumed are run again here, but wandb never rewrites its history (its rewind
        is a private preview), so it keeps the first attempt's values for them; say so once, instead of wandb
        warning at every step it drops. metrics.jsonl holds this run's values (rows past the checkpoint are cut)."""
        first = self.wandb_run.step  # the lowest step this wandb run still accepts
        if start_step is not None and first > start_step + 1:
            log.warning("wandb run %s already holds steps %d-%d, logged after the checkpoint at step %d by the attempt "
                        "that stopped; wandb keeps those values (it does not rewrite history) and gets this run's "
                        "from step %d on. metrics.jsonl holds this run's values for every step",
                        self.wandb_id, start_step + 1, first - 1, start_step, first)

    @staticmethod
    def console_line(step: int, total: int, metrics: dict[str, float]) -> str:
        keys = ["rollout/success_rate", "rollout/return_mean", "loss/p", "loss/policy", "loss/clip_frac",
                "loss/token_weight_ess", "eval/success_rate", "perf/step_seconds"]
        parts = [f"{k.split('/', 1)[1]}={metrics[k]:.3g}" for k in keys if k in metrics]
        return f"step {step}/{total} " + " ".join(parts)

    def close(self) -> None:
        self.jsonl.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


class NullTracker:
    """The tracker of a data-parallel rank other than 0: rank 0 logs for the run."""

    wandb_id = None

    def log(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def close(self) -> None:
        pass


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of a run's metrics.jsonl, in order ([] when it has none); an unparseable line (the torn last
    line of a killed run, which the run drops when it resumes) is skipped, so a report never crashes on it."""
    path = Path(run_dir) / "metrics.jsonl"
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


# what the Hölder loss did at each p (issue 14's p study): metric keys of the training rows, by short name
P_SIGNALS = {"ess": "loss/token_weight_ess", "clip_frac": "loss/clip_frac", "grad_norm": "loss/grad_norm",
             "train_success": "rollout/success_rate"}


def signals_per_p(rows: list[dict[str, Any]], width: float = 0.5) -> list[dict[str, Any]]:
    """Training rows that logged a p (``loss/p``), grouped by p rounded to the nearest ``width``, highest p first:
    ``{"p": bucket, "steps": n, "ess": mean, "clip_frac": ..., "grad_norm": ..., "train_success": ...}``, a mean
    being None where no row of the bucket has that signal (a step whose update was skipped)."""
    buckets: dict[float, list[dict[str, Any]]] = {}
    for row in rows:
        if isinstance(row.get("loss/p"), (int, float)):
            buckets.setdefault(round(row["loss/p"] / width) * width, []).append(row)
    out = []
    for b in sorted(buckets, reverse=True):
        entry: dict[str, Any] = {"p": b, "steps": len(buckets[b])}
        for name, key in P_SIGNALS.items():
            vals = [r[key] for r in buckets[b] if isinstance(r.get(key), (int, float))]
            entry[name] = sum(vals) / len(vals) if vals else None
        out.append(entry)
    return out


def format_signals(entry: dict[str, Any]) -> str:
    """``p≈+2.0: 3 steps, ESS 0.910, clip_frac 0.010, grad_norm 1.000, train success 0.500`` (n/a: not logged)."""
    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    return (f"p≈{entry['p']:+.1f}: {entry['steps']} steps, ESS {f(entry['ess'])}, clip_frac {f(entry['clip_frac'])}, "
            f"grad_norm {f(entry['grad_norm'])}, train success {f(entry['train_success'])}")


def _truncate_after(path: Path, step: int) -> None:
    """Keep the rows of ``path`` whose step is <= ``step`` (a torn last line goes too); atomic."""
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row_step = json.loads(line).get("step")
        except ValueError:
            dropped += 1
            continue
        if isinstance(row_step, (int, float)) and row_step > step:
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        log.info("metrics.jsonl: dropped %d row(s) past step %d (logged after the checkpoint being resumed)",
                 dropped, step)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, path)
