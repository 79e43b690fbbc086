"""p schedules and group advantage estimators."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from agent_rl.registry import Registry, RegistryError
from trainers.advantages import ADVANTAGES, compute_advantages
from trainers.schedules import SCHEDULES, make_schedule


def test_linear_matches_the_papers_default():
    s = make_schedule("linear", start=2.0, end=-2.0, steps=500)
    assert s(0) == 2.0 and s(250) == 0.0 and s(500) == -2.0 and s(10_000) == -2.0


@pytest.mark.parametrize("name", ["linear", "cosine", "quadratic", "cubic", "cubic_dec", "step"])
def test_every_shape_goes_from_start_to_end_monotonically_and_holds(name):
    s = make_schedule(name, start=2.0, end=-2.0, steps=100)
    values = [s(i) for i in range(0, 130)]
    assert values[0] == 2.0 and values[100] == -2.0 and values[-1] == -2.0
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_shapes_differ_in_the_middle_as_documented():
    mid = {n: make_schedule(n, start=0.0, end=1.0, steps=100)(25) for n in ("linear", "cosine", "quadratic", "cubic")}
    assert mid["linear"] == 0.25
    assert mid["quadratic"] == pytest.approx(0.0625)
    assert mid["cubic"] == pytest.approx(3 * 0.0625 - 2 * 0.25**3)
    assert mid["cosine"] == pytest.approx((1 - math.cos(math.pi / 4)) / 2)
    assert make_schedule("constant", value=1.5)(999) == 1.5


def test_cubic_dec_gives_the_authors_value_and_is_flat_through_the_midpoint():
    # the one value of the authors' cubic_dec known here: +0.26 at global step 37 of 150 on 2 -> -2
    s = make_schedule("cubic_dec", start=2.0, end=-2.0, steps=150)
    assert s(37) == pytest.approx(2.0 * (1 - 2 * 37 / 150) ** 3) and round(s(37), 2) == 0.26
    assert make_schedule("cubic", start=2.0, end=-2.0, steps=150)(37) == pytest.approx(1.39, abs=5e-3)
    assert s(75) == pytest.approx(0.0, abs=1e-12)  # the midpoint of the range at half-way
    # steep at the ends, flat in the middle: the first 10 steps move p more than the 10 around the midpoint
    assert s(0) - s(10) > 10 * (s(70) - s(80))
    # an asymmetric range: the same shape about the range's midpoint
    a = make_schedule("cubic_dec", start=2.0, end=1.0, steps=10)
    assert a(5) == pytest.approx(1.5) and a(0) == 2.0 and a(10) == 1.0


@pytest.mark.parametrize(
    "name,params,match",
    [
        ("linear", {"start": 2.0, "end": -2.0, "steps": 0}, "positive integer"),
        ("linear", {"start": 2.0, "end": -2.0, "steps": 2.5}, "positive integer"),
        ("linear", {"start": 2.0, "end": -2.0}, "exactly start, end, steps"),
        ("linear", {"start": float("nan"), "end": -2.0, "steps": 3}, "finite"),
        ("constant", {}, "value"),
        ("linaer", {"start": 1, "end": 0, "steps": 1}, "Did you mean 'linear'"),
    ],
)
def test_bad_schedule_parameters_are_clear_errors(name, params, match):
    with pytest.raises((ValueError, RegistryError), match=match):
        make_schedule(name, **params)


def test_negative_step_is_an_error():
    with pytest.raises(ValueError, match=">= 0"):
        make_schedule("linear", start=1, end=0, steps=5)(-1)


def test_grpo_advantages_normalise_per_group():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 5.0, 5.0, 2.0])
    g = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    adv = compute_advantages("grpo", r, g)
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std()
    assert torch.allclose(adv[:4], (torch.tensor([1.0, 0, 0, 1]) - 0.5) / (std + 1e-6))
    assert torch.equal(adv[4:], torch.zeros(3))  # equal rewards and a singleton give 0


def test_dr_grpo_and_rloo():
    r = torch.tensor([1.0, 0.0, 0.0, 3.0])
    g = torch.tensor([7, 7, 7, 7])
    assert torch.allclose(compute_advantages("dr_grpo", r, g), r - 1.0)
    others = torch.tensor([(0 + 0 + 3) / 3, (1 + 0 + 3) / 3, (1 + 0 + 3) / 3, (1 + 0 + 0) / 3])
    assert torch.allclose(compute_advantages("rloo", r, g), r - others)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.floats(-10, 10)), min_size=1, max_size=30), st.sampled_from(["grpo", "dr_grpo", "rloo"]))
def test_advantages_sum_to_zero_per_group_and_are_finite(rows, name):
    g = torch.tensor([a for a, _ in rows])
    r = torch.tensor([b for _, b in rows], dtype=torch.float64)
    adv = compute_advantages(name, r, g)
    assert adv.shape == r.shape and torch.isfinite(adv).all()
    for k in g.unique():
        assert abs(float(adv[g == k].sum())) < 1e-6 * max(1.0, float(r.abs().max()) * len(rows))


def test_registry_rejects_duplicates_and_suggests_names():
    reg: Registry = Registry("thing")
    reg.register("alpha")(1)
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("alpha")(2)
    with pytest.raises(RegistryError, match="Did you mean 'alpha'"):
        reg.get("alpah")
    assert "grpo" in ADVANTAGES and "cubic" in SCHEDULES


# ----------------------------------------------------------------------------- GiGPO


def _episode(group, steps, penalty_turns=()):
    """A per_step trajectory from (observation, reward) steps; turns listed in penalty_turns are invalid."""
    from agent_rl.types import Trajectory, Turn

    turns = [Turn(observation=o, prompt_ids=[1], response_ids=[2], response_logprobs=[-0.1], reward=r,
                  action_valid=i not in penalty_turns) for i, (o, r) in enumerate(steps)]
    env_return = sum(r for _, r in steps)
    return Trajectory(traj_id=f"{group}-{len(steps)}-{steps[0][0]}", group_id=group, task_id=group, turns=turns,
                      reward=env_return - 0.1 * len(penalty_turns), prompt_mode="per_step")


def _gigpo_reference(trajs, gamma, omega, penalty, episode="trajectory", norm="std"):
    """GiGPO by hand in float64 python: episode z-scores per group (over its trajectories' rewards, or with
    episode="turn" over its turn rows' scores: the env return less that turn's own penalty), step z-scores per
    (group, observation)."""
    import statistics

    def z(values, x):
        if len(values) < 2 or statistics.stdev(values) < 1e-12:
            return 0.0
        if norm == "mean":  # verl-agent's mode=mean_norm
            return x - statistics.mean(values)
        return (x - statistics.mean(values)) / (statistics.stdev(values) + 1e-6)

    def row_score(t, u):  # env return less this turn's penalty
        return sum(v.reward for v in t.turns) - penalty * (not u.action_valid)

    rows, anchor = [], {}
    for t in trajs:
        group = [u.reward for u in trajs if u.group_id == t.group_id]
        group_rows = [row_score(v, u) for v in trajs if v.group_id == t.group_id for u in v.turns]
        r = [u.reward - penalty * (not u.action_valid) for u in t.turns]
        rets = [sum(gamma ** (k - i) * r[k] for k in range(i, len(r))) for i in range(len(r))]
        for u, ret in zip(t.turns, rets):
            a_e = z(group, t.reward) if episode == "trajectory" else z(group_rows, row_score(t, u))
            rows.append((a_e, (t.group_id, u.observation), ret))
            anchor.setdefault((t.group_id, u.observation), []).append(ret)
    return [a_e + omega * z(anchor[key], ret) for a_e, key, ret in rows]


@pytest.mark.parametrize("norm", ["std", "mean"])
@pytest.mark.parametrize("episode", ["trajectory", "turn"])
@pytest.mark.parametrize("case", ["repeated_states", "no_repeats", "one_trajectory"])
def test_gigpo_equals_a_direct_implementation(case, episode, norm):
    from agent_rl.types import TrajectoryBatch
    from trainers.advantages import gigpo_advantages

    if case == "repeated_states":  # both start in s0; a revisits s0 and s1 is shared; b wins; group h: two losses
        trajs = [_episode("g", [("s0", 0), ("s1", 0), ("s0", 0)], penalty_turns=(2,)),
                 _episode("g", [("s0", 0), ("s1", 0), ("s2", 1.0)]),
                 _episode("g", [("s0", 0), ("s3", 1.0)]),
                 _episode("h", [("x", 0), ("y", 0)]), _episode("h", [("x", 0)])]
    elif case == "no_repeats":
        trajs = [_episode("g", [("a", 0), ("b", 1.0)]), _episode("g", [("c", 0), ("d", 0)])]
    else:
        trajs = [_episode("g", [("a", 0), ("a", 1.0)])]
    got = gigpo_advantages(TrajectoryBatch(trajs), gamma=0.9, omega=0.7, invalid_action_penalty=0.1, episode=episode,
                           norm=norm)
    want = _gigpo_reference(trajs, 0.9, 0.7, 0.1, episode, norm)
    assert got.shape == (sum(len(t.turns) for t in trajs),)
    assert got.tolist() == pytest.approx(want, abs=1e-5)
    if case == "no_repeats" and norm == "std":  # no anchor state is shared: GiGPO is GRPO given to every turn
        # (per turn row: 4 rows [1, 1, 0, 0], sample std 0.577 instead of 0.707 over 2 trajectories)
        a = 1 / (2 ** 0.5) if episode == "trajectory" else 0.5 / (1 / 3) ** 0.5
        assert got.tolist() == pytest.approx([a] * 2 + [-a] * 2, abs=1e-5)
    if case == "one_trajectory":  # nothing to compare within the group; its repeated state "a" still has signal
        assert got[0] != 0 and got[0] == pytest.approx(-got[1])
    with pytest.raises(ValueError, match="episode must be one of"):
        gigpo_advantages(TrajectoryBatch(trajs), episode="steps")
    with pytest.raises(ValueError, match="norm must be one of"):
        gigpo_advantages(TrajectoryBatch(trajs), norm="mean_norm")


def test_gigpo_runs_in_the_trainer_config():
    from agent_rl.config import ConfigError
    from agent_rl.validation import validate
    from agent_rl.train import compose_config

    cfg = compose_config(["algo=gigpo"])
    validate(cfg)
    assert (cfg.algo.loss, cfg.algo.advantage, cfg.algo.ratio_unit) == ("grpo", "gigpo", "turn")
    validate(compose_config(["algo=holder", "algo.advantage=gigpo", "algo.ratio_unit=turn"]))
    with pytest.raises(ConfigError, match="per-turn rows"):
        validate(compose_config(["algo.advantage=gigpo"]))
    validate(compose_config(["algo=gigpo", "algo.gigpo_episode=turn"]))
    with pytest.raises(ConfigError, match="algo.gigpo_episode"):
        validate(compose_config(["algo=gigpo", "algo.gigpo_episode=steps"]))
    validate(compose_config(["algo=gigpo", "algo.gigpo_norm=mean"]))
    with pytest.raises(ConfigError, match="algo.gigpo_norm"):
        validate(compose_config(["algo=gigpo", "algo.gigpo_norm=mean_norm"]))


def test_adaptive_p_anneals_while_the_token_weights_stay_spread_and_backs_off_toward_zero():
    from types import SimpleNamespace

    from trainers.schedules import PControl

    key = "loss/token_weight_ess_offpolicy"
    algo = SimpleNamespace(p_schedule="adaptive", p_start=2.0, p_end=-2.0, p_steps=None, p_target_ess=0.9)
    ctl = PControl(algo, total_steps=4)  # increment −1 per step
    seen = []
    for ess in (None, 0.95, 0.95, 0.5, 0.9, 0.99, 0.99, 0.99, float("nan")):
        if ess is not None:
            ctl.observe({key: ess})
        seen.append(ctl.p_for(len(seen)))
    # 2 (no signal yet), 1, 0, held at 0 (ESS 0.5 < 0.9: back toward 0), −1, −2, held at p_end, held on NaN
    assert seen == [2.0, 1.0, 0.0, 0.0, -1.0, -2.0, -2.0, -2.0, -2.0]
    ctl.observe({key: 0.1})
    resumed = PControl(algo, total_steps=4)
    resumed.restore(ctl.state())
    assert resumed.p_for(9) == ctl.p_for(9) == -1.0  # the saved state continues the same walk
    ctl.observe({"loss/token_weight_ess": 0.1})  # only on-policy updates (or none): no signal, p held
    assert ctl.p_for(10) == -1.0
    small = PControl(SimpleNamespace(**{**vars(algo), "p_start": 0.5, "p_end": -0.5}), total_steps=1)
    small.p, small.last_ess = 0.3, 0.0
    assert small.p_for(0) == 0.0  # backing off never crosses 0
    narrow = PControl(SimpleNamespace(**{**vars(algo), "p_start": 2.0, "p_end": 1.0}), total_steps=2)
    narrow.p, narrow.last_ess = 1.0, 0.0
    assert narrow.p_for(0) == 1.0  # nor leaves [p_end, p_start]
    fixed = PControl(SimpleNamespace(**{**vars(algo), "p_schedule": "linear"}), 4)
    assert fixed.state() == {}


def test_adaptive_p_needs_the_holder_loss():
    import pytest

    from agent_rl.config import ConfigError
    from agent_rl.validation import validate
    from agent_rl.train import compose_config

    validate(compose_config(["algo.p_schedule=adaptive", "algo.num_minibatches=2"]))
    with pytest.raises(ConfigError, match="adaptive"):
        validate(compose_config(["algo=grpo", "algo.p_schedule=adaptive", "algo.num_minibatches=2"]))
    with pytest.raises(ConfigError, match="p_target_ess"):
        validate(compose_config(["algo.p_schedule=adaptive", "algo.p_target_ess=1.5", "algo.num_minibatches=2"]))
    with pytest.raises(ConfigError, match="off-policy"):
        validate(compose_config(["algo.p_schedule=adaptive"]))  # one update per step: nothing to steer by
