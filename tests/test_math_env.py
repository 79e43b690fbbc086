"""The math env and its grader: Gymnasium contract, episodes, rewards, bounded grading."""

from __future__ import annotations

import os
import signal
import threading

import gymnasium
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import envs  # noqa: F401  (registers agent_rl/Math-v0)
from envs.math.datasets import MathProblem
from envs.math.env import MathEnv
from envs.math.grader import (
    EXTRACTORS,
    _GraderProcess,
    extract_answer_is,
    extract_boxed,
    extract_hash,
    extract_last_number,
    grade,
    is_equivalent,
)

ENV_ID = "agent_rl/Math-v0"


# ---------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so \\boxed{3}", "3"),
        ("\\boxed{1} then \\boxed{2}", "2"),  # the last one
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces do not close the box
        ("\\fbox{7}", "7"),
        ("\\boxed 5 is it", "5"),
        ("\\boxed{ }", None),
        ("\\boxed{unclosed", None),
        ("no answer here", None),
        ("\\boxed{4} and \\boxed{unclosed", "4"),  # an unbalanced last box falls back to an earlier one
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


def test_other_extractors():
    assert extract_hash("work\n#### 1,234\n") == "1,234"
    assert extract_hash("no hashes") is None
    assert extract_answer_is("So the answer is 42.") == "42"
    assert extract_answer_is("Answer: $\\boxed{7}$") == "7"
    # the first math span after "answer is", not the text up to the sentence's last "$"
    assert extract_answer_is("The answer is $3$, not $5$.") == "3"
    assert extract_answer_is("Answer: $$x^2$$ (or maybe $7$)") == "x^2"
    assert extract_answer_is("so the answer is \\(\\frac{1}{2}\\).") == "\\frac{1}{2}"
    assert not grade("The answer is $3$, not $5$.", "5", extractor="answer_is").correct
    assert grade("The answer is $3$, not $5$.", "3", extractor="answer_is").correct
    assert extract_last_number("3 apples and -2.5 pears, total 1,000") == "1,000"
    assert extract_last_number("none") is None
    assert set(EXTRACTORS.names()) >= {"boxed", "hash", "answer_is", "last_number"}


# ---------------------------------------------------------------- equivalence


@pytest.mark.parametrize(
    "answer, reference",
    [
        ("\\frac{1}{2}", "0.5"),
        ("0.5", "\\frac{1}{2}"),
        ("\\dfrac12", "\\frac{1}{2}"),
        ("x=3", "3"),
        ("3", "x = 3"),
        ("27", "27.0"),
        ("1,000", "1000"),
        ("\\$18", "18"),
        ("84, 69", "$69$,$84$"),  # OlympiadBench's multiple answers: a set
        ("(3, \\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("-\\frac{7}{22}", "-\\frac{7}{22}"),
        ("2\\sqrt{2}", "\\sqrt{8}"),
        ("\\frac{22}{24}", "\\frac{11}{12}"),
        ("50\\%", "50"),  # math-verify alone misses this inside \boxed{}; the grader reads it as $50\%$
        ("30^\\circ", "30"),
        ("5 \\text{ cm}", "5"),
    ],
)
def test_equivalent_answers(answer, reference):
    assert is_equivalent(answer, reference)


@pytest.mark.parametrize(
    "answer, reference",
    [("2", "\\frac{1}{2}"), ("3", "4"), ("(1, 2)", "(2, 1)"), ("x=4", "3"), ("-5", "5"), ("0.51", "\\frac{1}{2}")],
)
def test_different_answers(answer, reference):
    assert not is_equivalent(answer, reference)


def test_grade_reports_extraction():
    g = grade("I get \\boxed{x = 3}.", "3")
    assert g.correct and g.valid and g.extracted == "x = 3" and not g.timed_out
    g = grade("I don't know", "3")
    assert not g.correct and not g.valid and g.extracted is None


def test_a_reference_whose_parse_timed_out_once_is_graded_again(monkeypatch):
    import math_verify

    from envs.math import grader

    real, calls = math_verify.parse, []

    def parse(text, **kw):  # math-verify answers [] when its parsing times out: the first call here
        calls.append(text)
        return [] if len(calls) == 1 else real(text, **kw)

    monkeypatch.setattr(math_verify, "parse", parse)
    monkeypatch.setattr(grader, "_GOLD", {})
    with pytest.raises(ValueError, match="could not parse the reference"):
        grader._verify("7", "7", 5)
    assert grader._verify("7", "7", 5)  # parsed again, not the cached failure


def test_grade_pathological_answer_times_out_as_wrong():
    g = grade("\\boxed{10^{10^{10}}}", "1", timeout_s=1)
    assert not g.correct and g.valid and g.timed_out


def test_grade_overlong_answer_is_wrong_without_parsing():
    g = grade("\\boxed{" + "(" * 3000 + "1" + ")" * 3000 + "}", "1")
    assert not g.correct and g.valid and "longer than" in g.error


def test_failing_custom_extractor_is_a_wrong_answer():
    def broken(text):
        raise RuntimeError("boom")

    g = grade("\\boxed{1}", "1", extractor=broken)
    assert not g.correct and "boom" in g.error


def test_bad_grade_arguments_raise_clearly():
    with pytest.raises(ValueError, match="grade mode"):
        grade("x", "1", mode="fast")
    with pytest.raises(KeyError, match="Did you mean 'boxed'"):
        grade("x", "1", extractor="boxd")


_boxy = st.one_of(
    st.text(max_size=200),
    st.builds(lambda a, b, c: f"{a}\\boxed{{{b}}}{c}", st.text(max_size=40), st.text(max_size=60), st.text(max_size=20)),
    st.builds(
        lambda parts: "\\boxed{" + "".join(parts) + "}",
        st.lists(st.sampled_from(["\\frac{", "}", "{", "^", "_", "\\sqrt", "x", "1", "=", ",", "(", ")", "\\", "$",
                                  "\\left(", "\\right)", "\\infty", "\\pi", ".", "-", "%", "\\begin{pmatrix}", "&"]),
                 max_size=30),
    ),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_boxy, reference=st.sampled_from(["1", "\\frac{1}{2}", "x + 1", "(1, 2)", "\\{1, 2\\}"]))
def test_grade_never_raises_on_arbitrary_text(text, reference):
    g = grade(text, reference, timeout_s=1)
    assert isinstance(g.correct, bool)
    assert g.valid == (g.extracted is not None)


# ---------------------------------------------------------------- grading off the main thread


def _in_thread(fn):
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join(timeout=300)
    assert out, "grading in a worker thread did not finish"
    return out[0]


def test_grade_in_worker_thread_uses_subprocess_and_is_correct():
    from envs.math import grader

    before = len(grader._workers)
    right, wrong, slow = _in_thread(lambda: (
        grade("\\boxed{0.5}", "\\frac{1}{2}"),
        grade("\\boxed{2}", "\\frac{1}{2}"),
        grade("\\boxed{10^{10^{10}}}", "1", timeout_s=1),
    ))
    assert right.correct and not wrong.correct
    assert slow.timed_out and not slow.correct
    assert len(grader._workers) == before + 1  # one helper process per worker thread, reused


def test_inprocess_mode_refuses_worker_threads():
    def attempt():
        try:
            grade("\\boxed{1}", "1", mode="inprocess")
        except RuntimeError as exc:
            return exc
        return None

    exc = _in_thread(attempt)
    assert exc is not None and "main thread" in str(exc)


def test_wedged_grader_process_is_killed_and_restarted():
    worker = _GraderProcess()
    try:
        assert worker.grade("1", "1", timeout_s=1).correct
        os.kill(worker._proc.pid, signal.SIGSTOP)  # a worker that never answers
        g = worker.grade("1", "1", timeout_s=0.2)
        assert g.timed_out and not g.correct
        assert worker._proc is None  # killed
        assert worker.grade("\\frac{2}{4}", "0.5", timeout_s=1).correct  # a fresh one
    finally:
        worker.close()


# ---------------------------------------------------------------- the env


def test_make_and_check_env():
    env = gymnasium.make(ENV_ID)
    assert env.unwrapped.metadata["prompt_template"] == "math"
    check_env(env.unwrapped, skip_render_check=True)
    assert gymnasium.make("agent_rl/Math-v0", level=3).unwrapped.problems[0].task_type.startswith("generated/level3")
    env.close()


def test_reset_is_deterministic_per_seed_and_options_pick_the_problem():
    env = MathEnv(num_problems=50)
    obs_a, info_a = env.reset(seed=7)
    obs_b, info_b = MathEnv(num_problems=50).reset(seed=7)
    assert (obs_a, info_a["task_id"]) == (obs_b, info_b["task_id"])
    seen = {env.reset(seed=s)[1]["task_id"] for s in range(20)}
    assert len(seen) > 1  # seeds do pick different problems
    _, info = env.reset(options={"problem": 4})
    assert info["task_id"] == env.unwrapped.task_ids[4]
    _, info2 = env.reset(seed=123, options={"task": 4})
    assert info2["task_id"] == info["task_id"]
    assert env.num_tasks == 50 and len(env.task_ids) == 50 == len(set(env.task_ids))


def test_reset_info_and_observation():
    env = MathEnv()
    obs, info = env.reset(seed=0)
    assert info["task"] in obs and "\\boxed{}" in obs
    assert info["task_type"].startswith("generated/level1/")
    assert info["won"] is False and info["success"] is False
    assert {"task_id", "reference_answer"} <= set(info)


def test_right_answer_wins_and_terminates():
    env = MathEnv(reward_scale=2.0)
    _, info = env.reset(seed=1)
    obs, reward, terminated, truncated, info = env.step(f"Adding up: \\boxed{{{info['reference_answer']}}}")
    assert reward == 2.0 and terminated and not truncated
    assert info["won"] and info["success"] and info["action_valid"]
    assert info["extracted_answer"] == info["reference_answer"]


def test_wrong_and_invalid_answers():
    env = MathEnv()
    _, info = env.reset(seed=1)
    wrong = str(int(info["reference_answer"]) + 1)
    _, reward, terminated, truncated, info = env.step(f"\\boxed{{{wrong}}}")
    assert reward == 0.0 and terminated and not truncated and not info["won"] and info["action_valid"]
    env.reset(seed=1)
    _, reward, terminated, _, info = env.step("I think it is twenty")
    assert reward == 0.0 and terminated and info["action_valid"] is False and info["extracted_answer"] is None


def test_multi_attempt_feedback():
    env = MathEnv(max_attempts=3)
    _, info = env.reset(seed=2)
    ref = info["reference_answer"]
    obs, reward, terminated, truncated, info = env.step("no idea")
    assert not terminated and not truncated and reward == 0.0 and "No final answer" in obs
    obs, reward, terminated, _, info = env.step(f"\\boxed{{{int(ref) + 1}}}")
    assert not terminated and "incorrect" in obs and info["attempts"] == 2
    obs, reward, terminated, _, info = env.step(f"\\boxed{{{ref}}}")
    assert terminated and reward == 1.0 and info["won"] and info["attempts"] == 3
    with pytest.raises(RuntimeError, match="reset"):
        env.step("again")


def test_attempts_run_out():
    env = MathEnv(max_attempts=2)
    env.reset(seed=0)
    assert not env.step("\\boxed{-1}")[2]
    _, reward, terminated, truncated, info = env.step("\\boxed{-1}")
    assert terminated and not truncated and reward == 0.0 and not info["won"]


def test_other_extractor_and_instruction():
    env = MathEnv(extractor="hash")
    obs, info = env.reset(seed=0)
    assert "####" in obs
    assert env.step(f"so\n#### {info['reference_answer']}")[1] == 1.0
    env = MathEnv(instruction="")
    obs, info = env.reset(seed=0)
    assert obs == info["task"]


def test_programmatic_problem_list():
    probs = [MathProblem("p0", "What is half of 1?", "\\frac{1}{2}", "mine")]
    env = MathEnv(problems=probs)
    _, info = env.reset(seed=0)
    assert info["task_type"] == "mine"
    assert env.step("\\boxed{0.5}")[1] == 1.0


def test_bad_arguments_raise_clearly():
    with pytest.raises(ValueError, match="max_attempts"):
        MathEnv(max_attempts=0)
    with pytest.raises(ValueError, match="level"):
        MathEnv(level=9)
    with pytest.raises(ValueError, match="Did you mean 'math500'"):
        MathEnv(dataset="math50")
    with pytest.raises(KeyError, match="answer extractor"):
        MathEnv(extractor="nope")
    env = MathEnv(num_problems=5)
    with pytest.raises(IndexError, match="0..4"):
        env.reset(options={"problem": 5})
    with pytest.raises(ValueError, match="unknown reset option"):
        env.reset(options={"game": 1})
    with pytest.raises(TypeError, match="int problem index"):
        env.reset(options={"task": "3"})
    with pytest.raises(RuntimeError, match="reset"):
        MathEnv().step("\\boxed{1}")


def test_render_ansi():
    env = MathEnv(render_mode="ansi")
    obs, _ = env.reset(seed=0)
    assert env.render() == obs


@settings(max_examples=40, deadline=None)
@given(action=_boxy)
def test_env_step_never_raises_on_any_reply(action):
    env = MathEnv(num_problems=10, grade_timeout_s=1)
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(action)
    assert isinstance(obs, str) and reward in (0.0, 1.0) and terminated and not truncated
    assert info["action_valid"] == (info["extracted_answer"] is not None)


def test_forked_child_does_not_share_the_parents_grader_process():
    worker = _GraderProcess()
    try:
        assert worker.grade("1", "1", timeout_s=1).correct
        parent_helper = worker._proc.pid
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: grade through the inherited object, report which helper answered
            ok = False
            try:
                ok = worker.grade("\\frac{1}{2}", "0.5", timeout_s=1).correct and worker._proc.pid != parent_helper
            finally:
                worker.close()
                os.write(write_end, b"1" if ok else b"0")
                os._exit(0)
        os.close(write_end)
        assert os.read(read_end, 1) == b"1"
        os.waitpid(pid, 0)
        assert worker.grade("2", "2", timeout_s=1).correct and worker._proc.pid == parent_helper
    finally:
        worker.close()


def test_grader_process_that_dies_is_reported_and_replaced():
    worker = _GraderProcess()
    try:
        assert worker.grade("1", "1", timeout_s=1).correct
        os.kill(worker._proc.pid, signal.SIGKILL)
        worker._proc.wait()
        # poll() sees the death before the request, so this one restarts cleanly
        assert worker.grade("3", "3", timeout_s=1).correct
        # a death mid-request is reported as an error, not as a timeout
        worker._proc.stdin.write("not json\n")  # the helper crashes on its next read
        worker._proc.stdin.flush()
        g = worker.grade("4", "4", timeout_s=1)
        assert not g.correct and not g.timed_out and "died" in g.error
        assert worker.grade("5", "5", timeout_s=1).correct
    finally:
        worker.close()


def test_extractor_returning_a_non_string_is_a_wrong_answer():
    g = grade("\\boxed{1}", "1", extractor=lambda text: 1)
    assert not g.correct and "expected str or None" in g.error


def test_math_env_in_an_env_pool_worker_process():
    from envs.pool import EnvPool

    with EnvPool(ENV_ID, 2, env_kwargs={"level": 2, "num_problems": 20}, num_workers=1) as pool:
        first = pool.reset([(0, 5, None), (1, None, {"task": 3})])
        assert all(r.error is None for r in first)
        assert first[1].info["task_id"] == "gen-s0-L2-3"
        answers = [f"\\boxed{{{first[0].info['reference_answer']}}}", "no idea"]
        out = pool.step([(0, answers[0]), (1, answers[1])])
        assert [r.reward for r in out] == [1.0, 0.0]
        assert out[0].info["won"] and out[1].info["action_valid"] is False
