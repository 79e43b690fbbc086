"""Eval report math and files: Wilson intervals, pass@k, episodes.jsonl resume, task subsets."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eval import report
from eval.runner import EvalConfigError, select_tasks, stratified_subset

# --------------------------------------------------------------------------- Wilson


# Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I, method 3
# (Wilson score interval without continuity correction).
NEWCOMBE = [
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0000, 0.1611),
    (1, 29, 0.0061, 0.1718),
]


@pytest.mark.parametrize("successes,n,low,high", NEWCOMBE)
def test_wilson_matches_published_values(successes, n, low, high):
    lo, hi = report.wilson_interval(successes, n)
    assert lo == pytest.approx(low, abs=1e-4)
    assert hi == pytest.approx(high, abs=1e-4)


def test_wilson_edges():
    assert report.wilson_interval(0, 10)[1] == pytest.approx(1.959964**2 / (10 + 1.959964**2), abs=1e-6)
    lo, hi = report.wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(1 - 1.959964**2 / (10 + 1.959964**2), abs=1e-6)
    assert report.wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="successes"):
        report.wilson_interval(3, 2)


@given(st.integers(1, 500).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
@settings(max_examples=200, deadline=None)
def test_wilson_contains_the_estimate(pair):
    successes, n = pair
    lo, hi = report.wilson_interval(successes, n)
    assert 0.0 <= lo <= successes / n <= hi <= 1.0


# --------------------------------------------------------------------------- pass@k


def test_pass_at_k_known_values():
    assert report.pass_at_k(10, 3, 4) == pytest.approx(1 - 35 / 210)  # 1 - C(7,4)/C(10,4)
    assert report.pass_at_k(5, 0, 3) == 0.0
    assert report.pass_at_k(5, 5, 1) == 1.0
    assert report.pass_at_k(4, 2, 3) == 1.0  # n - c < k: every draw of 3 holds a correct one
    with pytest.raises(ValueError):
        report.pass_at_k(4, 1, 5)


@given(st.integers(1, 60).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
@settings(max_examples=300, deadline=None)
def test_pass_at_k_equals_combinatorial_formula(args):
    n, c, k = args
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)
    assert report.pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-9)
    if k == 1:
        assert report.pass_at_k(n, c, 1) == pytest.approx(c / n)


def test_pass_k_values():
    assert report.pass_k_values(1) == [1]
    assert report.pass_k_values(4) == [1, 2, 4]
    assert report.pass_k_values(6) == [1, 2, 4, 6]


# --------------------------------------------------------------------------- episodes.jsonl


def _record(i: int, sample: int = 0, won: bool = True, task_type: str = "a", steps: int = 3, invalid: int = 0):
    return {"task_index": i, "task_id": f"t{i}", "task_type": task_type, "sample": sample, "won": won,
            "steps": steps, "invalid_actions": invalid}


def test_episode_log_resumes_after_a_torn_last_line(tmp_path):
    path = tmp_path / "episodes.jsonl"
    good = [json.dumps(_record(0)), json.dumps(_record(1, won=False))]
    path.write_text("\n".join(good) + "\n" + '{"task_index": 2, "task_id": "t2", "wo')
    log = report.EpisodeLog(path)
    assert log.dropped_torn_line
    assert [r["task_index"] for r in log.records] == [0, 1]
    assert log.done_keys() == {(0, 0), (1, 0)}
    with log:
        log.append(_record(2))
    lines = path.read_text().splitlines()
    assert [json.loads(line)["task_index"] for line in lines] == [0, 1, 2]  # the torn bytes are gone
    assert report.EpisodeLog(path).records == [_record(0), _record(1, won=False), _record(2)]


def test_episode_log_keeps_a_whole_last_line_without_newline(tmp_path):
    path = tmp_path / "episodes.jsonl"
    path.write_text(json.dumps(_record(0)))
    log = report.EpisodeLog(path)
    assert not log.dropped_torn_line and len(log.records) == 1
    log.append(_record(1))
    log.close()
    assert len(report.EpisodeLog(path).records) == 2


def test_episode_log_damaged_middle_line_is_an_error(tmp_path):
    path = tmp_path / "episodes.jsonl"
    path.write_text(json.dumps(_record(0)) + "\n{broken\n" + json.dumps(_record(2)) + "\n")
    with pytest.raises(report.EpisodeLogError, match="line 2"):
        report.EpisodeLog(path)
    path.write_text(json.dumps({"something": "else"}) + "\n")
    with pytest.raises(report.EpisodeLogError, match="not an agent-rl episode record"):
        report.EpisodeLog(path)


# --------------------------------------------------------------------------- summarize, files


def test_summarize_and_metrics(tmp_path):
    records = [_record(0, won=True, task_type="a", steps=4, invalid=1), _record(1, won=False, task_type="a", steps=6),
               _record(2, won=True, task_type="b", steps=2)]
    results = report.summarize(records, task_types=["b", "a", "c"], model="m")
    assert results["success_rate"] == pytest.approx(2 / 3)
    assert results["episodes"] == 3 and results["successes"] == 2
    assert results["mean_steps"] == pytest.approx(4.0)
    assert results["invalid_action_rate"] == pytest.approx(1 / 12)
    assert list(results["per_task_type"]) == ["b", "a", "c"]
    assert results["per_task_type"]["a"]["ci95"] == pytest.approx(list(report.wilson_interval(1, 2)))
    assert results["per_task_type"]["c"]["episodes"] == 0 and results["model"] == "m"
    metrics = report.metrics_from(results)
    assert metrics["eval/success_rate"] == pytest.approx(2 / 3)
    assert metrics["eval/a/success_rate"] == 0.5 and metrics["eval/b/success_rate"] == 1.0
    assert all(k.startswith("eval/") for k in metrics)

    report.write_results(tmp_path, results)
    assert json.loads((tmp_path / "results.json").read_text())["success_rate"] == pytest.approx(2 / 3)
    csv_lines = (tmp_path / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("scope,name,tasks,episodes,successes,success_rate,ci95_low,ci95_high")
    assert csv_lines[1].startswith("all,all,3,3,2,0.666667")
    table = report.format_table(report.csv_rows(results))
    assert "all" in table and " 66.7%" in table and "[" in table


@settings(max_examples=300, deadline=None)
@given(st.booleans(), st.lists(st.sampled_from(["go to desk 1", "look", "take pen 1 from desk 1", "<think>"]),
                               max_size=12), st.randoms())
def test_is_loop_matches_its_definition_and_ignores_order(won, actions, rnd):
    from agent_rl.types import LOOP_MIN_STEPS, is_loop

    # the definition spelled out: lost, long enough, and some action sent in at least half of the turns
    expected = not won and len(actions) >= LOOP_MIN_STEPS and any(2 * actions.count(a) >= len(actions) for a in actions)
    shuffled = list(actions)
    rnd.shuffle(shuffled)
    assert is_loop(won, actions) == expected == is_loop(won, shuffled)


def test_is_loop_cases():
    from agent_rl.types import is_loop

    assert is_loop(False, ["go to desk 1", "look", "go to desk 1", "look"])  # half is enough
    assert not is_loop(False, ["go to desk 1", "look", "go to desk 1", "look", "inventory"])  # 2 of 5 is not
    assert not is_loop(False, ["look"] * 3)  # too short to call a loop
    assert not is_loop(True, ["look"] * 10)  # a won episode never loops
    assert not is_loop(False, [])


def test_loop_rate_counts_lost_episodes_stuck_on_one_action():
    stuck = dict(_record(0, won=False, steps=4), actions=["go to desk 1"] * 4)
    searching = dict(_record(1, won=False, steps=4), actions=["go to desk 1", "open drawer 1", "go to bed 1", "look"])
    won = dict(_record(2, steps=4), actions=["look"] * 4)
    results = report.summarize([stuck, searching, won])
    assert results["loop_rate"] == pytest.approx(1 / 3)
    assert report.metrics_from(results)["eval/loop_rate"] == pytest.approx(1 / 3)
    # records without actions (the expert and random policies keep none) give no rate rather than a made-up 0
    results = report.summarize([_record(0, won=False)])
    assert "loop_rate" not in results and "eval/loop_rate" not in report.metrics_from(results)
    assert report.loop_rate([]) is None  # an eval with no episode yet (the curve's fallback reads an empty file)


def test_summarize_pass_at_k_over_samples():
    # task 0: 1 of 4 samples right; task 1: 4 of 4; task 2: none.
    records = [_record(0, s, won=s == 0) for s in range(4)] + [_record(1, s) for s in range(4)] + \
              [_record(2, s, won=False) for s in range(4)]
    results = report.summarize(records, samples=4)
    assert results["pass@1"] == pytest.approx((0.25 + 1 + 0) / 3)
    assert results["pass@1"] == pytest.approx(results["success_rate"])
    assert results["pass@2"] == pytest.approx((report.pass_at_k(4, 1, 2) + 1) / 3)
    assert results["pass@4"] == pytest.approx(2 / 3)
    assert results["tasks"] == 3 and results["episodes"] == 12


def test_plot_writes_a_png(tmp_path):
    from eval.plots import plot_success

    results = report.summarize([_record(0), _record(1, won=False, task_type="b")])
    path = plot_success(report.csv_rows(results), tmp_path / "success.png", title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- task selection

TYPES = ["x"] * 24 + ["y"] * 18 + ["z"] * 31 + ["w"] * 5
IDS = [f"{t}-{i:03d}" for i, t in enumerate(TYPES)]


def test_stratified_subset_is_stable_nested_and_proportional():
    previous: set[int] = set()
    for n in range(0, len(IDS) + 1):
        subset = stratified_subset(TYPES, IDS, n)
        assert subset == sorted(subset) and len(set(subset)) == n
        assert subset == stratified_subset(list(TYPES), list(IDS), n)  # deterministic
        assert previous <= set(subset)  # nested: a longer eval resumes a shorter one
        previous = set(subset)
        counts = Counter(TYPES[i] for i in subset)
        for task_type, size in Counter(TYPES).items():
            assert abs(counts[task_type] - n * size / len(TYPES)) <= 1.0 + 1e-9, (n, task_type, counts)


def test_stratified_subset_golden():
    # Pins the documented algorithm (sha256 rank within type, (j + 0.5) / N_t interleave):
    # changing it silently would change every published subset eval.
    assert stratified_subset(TYPES, IDS, 6) == [17, 23, 36, 42, 47, 67]


def test_select_tasks_errors_and_defaults():
    assert select_tasks(5, None, None, list("abcde")) == [0, 1, 2, 3, 4]
    assert select_tasks(5, 5, None, list("abcde")) == [0, 1, 2, 3, 4]
    assert len(select_tasks(5, 3, None, list("abcde"))) == 3
    with pytest.raises(EvalConfigError, match="asked for 135 episodes but .* has only 134 tasks"):
        select_tasks(134, 135, None, [str(i) for i in range(134)])
    with pytest.raises(EvalConfigError, match="positive int"):
        select_tasks(5, 0, None, list("abcde"))
