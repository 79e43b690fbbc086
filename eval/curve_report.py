"""The ALFWorld curve's report (``python -m agent_rl.curve``, the end of its data flow: each stage's eval
``results.json`` and each RL stage's ``metrics.jsonl`` → tables).

* :func:`table`: success per stage × task type with Wilson intervals, invalid-action, step and loop rates.
* :func:`paired`: per game, each stage against the one it started from and the RL stages against each other
  (games one wins and the other loses, exact McNemar p, :func:`mcnemar_p`).
* :func:`training`: what each RL stage's steps did (steps with a gradient, rollout success, dynamic sampling,
  the loss's signals per p).
* :func:`report`: writes ``curve.csv`` and ``curve.png`` to ``--out`` and prints all of the above.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from trainers.tracking import format_signals, read_metrics, signals_per_p


def table(args) -> list[dict]:
    rows = []
    for stage_dir in sorted(args.out.glob("eval_*")):
        path = stage_dir / "results.json"
        if not path.is_file():
            continue
        r = json.loads(path.read_text())
        stage = stage_dir.name[len("eval_"):]
        loops = r["loop_rate"] if "loop_rate" in r else loop_rate(stage_dir, r["episodes"])  # older evals
        groups = [("all", r)] + sorted(r["per_task_type"].items())
        for name, g in groups:
            rows.append({"stage": stage, "task_type": name, "episodes": g["episodes"], "successes": g["successes"],
                         "success_rate": round(g["success_rate"], 4), "ci95_low": round(g["ci95"][0], 4),
                         "ci95_high": round(g["ci95"][1], 4),
                         "invalid_action_rate": round(r["invalid_action_rate"], 4) if name == "all" else "",
                         "mean_steps": round(r["mean_steps"], 2) if name == "all" else "",
                         "loop_rate": round(loops, 4) if name == "all" and loops is not None else ""})
    order = {s: i for i, s in enumerate(["untrained", "sft", "rl-holder", "rl-grpo"])}
    rows.sort(key=lambda x: (order.get(x["stage"], 9), x["stage"], x["task_type"] != "all", x["task_type"]))
    return rows


def loop_rate(eval_dir: Path, episodes: int) -> float | None:
    """The share of an eval's episodes lost in a loop (:func:`agent_rl.types.is_loop`), from its episodes.jsonl,
    for evals whose results.json predates ``loop_rate``: None (nothing printed) unless the file holds exactly
    ``episodes`` whole records, each with its actions (a resume into a folder of a larger eval keeps more)."""
    from eval.report import loop_rate as records_loop_rate

    path = eval_dir / "episodes.jsonl"
    try:
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []
    except json.JSONDecodeError:  # a torn line: eval's own reader reports it; a diagnostic is not worth failing on
        return None
    return records_loop_rate(rows) if len(rows) == episodes else None


def mcnemar_p(gained: int, lost: int) -> float:
    """Exact two-sided McNemar p: under "no difference" each game one stage wins and the other loses is a fair
    coin, so the discordant games are Binomial(gained + lost, 1/2)."""
    from math import comb

    n = gained + lost
    tail = sum(comb(n, i) for i in range(min(gained, lost) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired(args) -> list[dict]:
    """Per game, each RL stage against the model it started from (the SFT stage, or the untrained model when
    the SFT stage was not evaluated), SFT against untrained, and the RL stages against each other: the games
    one wins and the other loses, and the exact McNemar p of that split. Stages play the same games (same
    seeds), so this separates a real change from the noise of which games happened to be won."""
    wins = {}
    for stage_dir in sorted(args.out.glob("eval_*")):
        path = stage_dir / "episodes.jsonl"
        if (stage_dir / "results.json").is_file() and path.is_file():
            rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
            wins[stage_dir.name[len("eval_"):]] = {(r["task_id"], r.get("sample", 0)): bool(r["won"]) for r in rows}
    rl = sorted(s for s in wins if s.startswith("rl-"))
    base = "sft" if "sft" in wins else "untrained"
    pairs = [(s, base) for s in rl if base in wins]
    pairs += [("sft", "untrained")] if {"sft", "untrained"} <= set(wins) else []
    pairs += [(a, b) for i, a in enumerate(rl) for b in rl[i + 1:]]
    out = []
    for a, b in pairs:
        games = wins[a].keys() & wins[b].keys()
        gained = sum(wins[a][g] and not wins[b][g] for g in games)
        lost = sum(wins[b][g] and not wins[a][g] for g in games)
        out.append({"stage": a, "versus": b, "games": len(games), "won_only_by_stage": gained,
                    "won_only_by_versus": lost, "mcnemar_p": round(mcnemar_p(gained, lost), 4)})
    return out


def training(args) -> list[dict]:
    """What each RL stage's steps did, from its run's metrics.jsonl: how many steps had a gradient at all (a step
    whose groups each scored all their episodes alike has none: its update is skipped, and the stage's model is
    the one it started from), the rollout success over the steps (first-round episodes, as without dynamic
    sampling), with dynamic sampling the tasks played and informative groups kept, and the loss's signals
    (token-weight ESS, clip fraction, gradient norm) per p."""
    out = []
    for run_dir in sorted(args.out.glob("rl-*")):
        # step → its training row (a row without rollout metrics, the step-0 eval, is not one)
        steps: dict[int, dict] = {}
        for row in read_metrics(run_dir):  # a killed stage's torn last line is skipped there
            if "rollout/success_rate" in row and "step" in row:
                steps[int(row["step"])] = row
        if not steps:
            continue
        rows = [steps[k] for k in sorted(steps)]
        out.append({"stage": run_dir.name, "steps": len(rows),
                    # an update that ran on a non-zero gradient: not every update skipped as all-zero, and some
                    # update at all (dynamic sampling's batch can be empty: no informative group found)
                    "steps_with_gradient": sum(r.get("perf/optimizer_steps", 1.0) > 0
                                               and r.get("perf/skipped_zero_gradient", 0.0) < 1.0 for r in rows),
                    "rollout_success": [round(r["rollout/success_rate"], 3) for r in rows],
                    "tasks_played": sum(r.get("rollout/tasks_played", 0.0) for r in rows),
                    "informative_groups": sum(r.get("rollout/informative_groups", 0.0) for r in rows),
                    "minutes": sum(r.get("perf/step_seconds", 0.0) for r in rows) / 60,
                    "signals_per_p": signals_per_p(rows)})
    return out


def report(rows: list[dict], args) -> None:
    with open(args.out / "curve.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    width = max([10] + [len(x["stage"]) for x in rows])  # rl-holder+gigpo+ds lines up with sft
    for x in rows:
        extra = (f"  invalid={x['invalid_action_rate']} steps={x['mean_steps']}" + (
            f" loops={x['loop_rate']}" if x["loop_rate"] != "" else "")) if x["task_type"] == "all" else ""
        print(f"alfworld_curve {x['stage']:<{width}} {x['task_type']:<32} {x['successes']:>3}/{x['episodes']:<3} "
              f"= {x['success_rate']:.3f}  [95% {x['ci95_low']:.3f}, {x['ci95_high']:.3f}]{extra}")
    for x in paired(args):
        print(f"alfworld_curve paired {x['stage']} vs {x['versus']}: {x['games']} games, "
              f"+{x['won_only_by_stage']} / -{x['won_only_by_versus']} "
              f"(net {x['won_only_by_stage'] - x['won_only_by_versus']:+d}), exact McNemar p = {x['mcnemar_p']:.3f}")
    for x in training(args):
        ds = (f", dynamic sampling: {x['tasks_played']:.0f} tasks played, {x['informative_groups']:.0f} informative "
              f"groups kept" if x["tasks_played"] else "")
        print(f"alfworld_curve training {x['stage']}: {x['steps']} step{'s' * (x['steps'] != 1)} in "
              f"{x['minutes']:.1f} min, "
              f"{x['steps_with_gradient']} with a gradient, rollout success per step "
              f"{' '.join(f'{v:.3f}' for v in x['rollout_success'])}{ds}")
        for entry in x["signals_per_p"]:  # what the loss did at each p (the p study's signals)
            print(f"alfworld_curve training {x['stage']}:   {format_signals(entry)}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    overall = [x for x in rows if x["task_type"] == "all"]
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = range(len(overall))
    ys = [x["success_rate"] for x in overall]
    err = [[y - x["ci95_low"] for y, x in zip(ys, overall)], [x["ci95_high"] - y for y, x in zip(ys, overall)]]
    ax.bar(xs, ys, yerr=err, capsize=4, color="tab:blue")
    ax.set_xticks(list(xs), [x["stage"] for x in overall])
    ax.set_ylabel(f"success on {args.episodes} {args.source} valid_unseen games")
    ax.set_ylim(0, 1)
    mode = ", actions constrained to the admissible ones" if getattr(args, "constrain_actions", False) else ""
    ax.set_title(f"SmolLM2-135M-Instruct on ALFWorld (CPU{mode}), Wilson 95%", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out / "curve.png", dpi=120)
    print(f"alfworld_curve wrote {args.out / 'curve.csv'} and {args.out / 'curve.png'}")
