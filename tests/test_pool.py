"""EnvPool / RayEnvPool (env → rollout): batches in order, failures reported, crashed workers restarted.

The crash paths are real: worker processes are SIGKILLed, exit mid-step or hang past the timeout.
Most tests use a tiny counter env defined here (workers import this module by name); one test
runs the real ALFWorld env through worker processes.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
import time

import gymnasium as gym
import pytest

import envs  # noqa: F401
from envs.pool import EnvPool, StepResult
from envs.spaces import UnicodeText

COUNTER_ID = "agent_rl_test/Counter-v0"
THIS_MODULE = __name__  # what a spawned worker imports to get the counter env registered


class CounterEnv(gym.Env):
    """Counts steps; special actions crash the process, hang or raise."""

    metadata = {"render_modes": []}

    def __init__(self, fail: bool = False, max_episode_steps: int = 1000):
        if fail:
            raise RuntimeError("CounterEnv(fail=True) refuses to build")
        self.max_episode_steps = max_episode_steps
        self.observation_space = UnicodeText()
        self.action_space = UnicodeText()

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.count, self.t = int(self.np_random.integers(1000)), 0
        return f"start {self.count}", {"pid": os.getpid(), "options": options}

    def step(self, action):
        if action == "crash":
            os._exit(3)
        if action == "hang":
            time.sleep(120)
        if action == "raise":
            raise ValueError("bad action")
        self.count += 1
        self.t += 1
        return f"{action} {self.count}", 1.0, action == "win", self.t >= self.max_episode_steps, {"pid": os.getpid()}


if COUNTER_ID not in gym.registry:
    gym.register(COUNTER_ID, entry_point=f"{THIS_MODULE}:CounterEnv", disable_env_checker=True)


def _pool(num_envs=4, num_workers=2, **kw):
    return EnvPool(COUNTER_ID, num_envs, kw.pop("env_kwargs", None), num_workers, [THIS_MODULE], **kw)


def test_in_process_pool_steps_in_request_order():
    with _pool(num_workers=0) as pool:
        resets = pool.reset([(2, 5, {"a": 1}), (0, 6, None)])
        assert [r.env_index for r in resets] == [2, 0] and resets[0].info["options"] == {"a": 1}
        results = pool.step([(0, "x"), (2, "win"), (1, "y")])
        assert [r.env_index for r in results] == [0, 2, 1]
        assert results[1].terminated and not results[1].truncated and results[1].reward == 1.0
        assert results[2].error is not None  # env 1 was never reset: reported, not raised
        assert all(r.info["pid"] == os.getpid() for r in results[:2])


def test_worker_pool_gives_the_same_results_as_in_process():
    requests = [(i, 100 + i, None) for i in range(4)]
    actions = [(3, "a"), (0, "b"), (2, "c"), (1, "d")]
    with _pool(num_workers=0) as local:
        want = [local.reset(requests), local.step(actions)]
    with _pool(num_workers=2) as pool:
        got = [pool.reset(requests), pool.step(actions)]
        pids = pool.worker_pids()
    strip = lambda rs: [(r.env_index, r.observation, r.reward, r.terminated, r.truncated, r.error) for r in rs]
    assert [strip(x) for x in got] == [strip(x) for x in want]
    by_env = {r.env_index: r.info["pid"] for r in got[1]}
    assert by_env[0] == by_env[2] == pids[0] and by_env[1] == by_env[3] == pids[1] and pids[0] != pids[1]


def test_env_exception_fails_that_episode_only():
    with _pool(num_envs=2, num_workers=1) as pool:
        pool.reset([(0, 0, None), (1, 1, None)])
        bad, good = pool.step([(0, "raise"), (1, "ok")])
        assert "ValueError: bad action" in bad.error and bad.truncated and bad.observation == ""
        assert good.error is None and good.observation.startswith("ok ")
        again = pool.step([(0, "ok")])[0]
        assert "reset it" in again.error
        pool.reset([(0, 0, None)])
        assert pool.step([(0, "ok")])[0].error is None and pool.restarts == 0


def test_killed_worker_is_restarted_and_its_episodes_reported():
    with _pool(num_envs=4, num_workers=2) as pool:
        pool.reset([(i, i, None) for i in range(4)])
        old = pool.worker_pids()
        os.kill(old[1], signal.SIGKILL)  # holds envs 1 and 3
        start = time.monotonic()
        results = pool.step([(i, "go") for i in range(4)])
        assert time.monotonic() - start < 60
        assert [r.error is None for r in results] == [True, False, True, False]
        assert "died (exit code -9)" in results[1].error and "episode is lost" in results[3].error
        assert pool.restarts == 1 and pool.worker_pids()[0] == old[0] and pool.worker_pids()[1] != old[1]
        # Still no silent continuation: the lost envs keep saying so until they are reset.
        assert all("reset it" in r.error for r in pool.step([(1, "go"), (3, "go")]))
        assert all(r.error is None for r in pool.reset([(1, 1, None), (3, 3, None)]))
        assert all(r.error is None for r in pool.step([(i, "go") for i in range(4)]))


def test_crash_mid_step_loses_the_idle_neighbours_too():
    with _pool(num_envs=4, num_workers=2) as pool:
        pool.reset([(i, i, None) for i in range(4)])
        crashed, fine = pool.step([(1, "crash"), (0, "go")])
        assert "exit code 3" in crashed.error and fine.error is None
        neighbour = pool.step([(3, "go")])[0]  # env 3 lived on the crashed worker but was idle
        assert "while env 3 was idle" in neighbour.error


def test_a_worker_that_cannot_be_restarted_loses_the_whole_batch_not_the_pool_s_bookkeeping(monkeypatch):
    import envs.pool as pool_module

    with _pool(num_envs=4, num_workers=2) as pool:
        pool.reset([(i, i, None) for i in range(4)])
        real_ready = pool_module._Worker.wait_ready

        def fails_once(self):  # the restarted worker cannot build its envs (a broken install mid-run)
            monkeypatch.setattr(pool_module._Worker, "wait_ready", real_ready)
            self.kill()
            raise RuntimeError(f"env worker {self.rank} could not build its envs")

        monkeypatch.setattr(pool_module._Worker, "wait_ready", fails_once)
        with pytest.raises(RuntimeError, match="could not build its envs"):
            pool.step([(1, "crash"), (0, "go")])
        # env 0 did step, but its result never came back: it must not go on as if it had not
        assert all(r.error and "reset it" in r.error for r in pool.step([(0, "go"), (1, "go"), (3, "go")]))
        assert all(r.error is None for r in pool.reset([(i, i, None) for i in range(4)]) if r.env_index in (0, 2))
        results = pool.reset([(i, i, None) for i in range(4)])  # the dead worker is replaced by now
        assert all(r.error is None for r in results), [r.error for r in results]
        assert all(r.error is None for r in pool.step([(i, "go") for i in range(4)]))


def test_hung_worker_times_out_instead_of_hanging():
    with _pool(num_envs=2, num_workers=2, timeout_s=3.0) as pool:
        pool.reset([(0, 0, None), (1, 1, None)])
        start = time.monotonic()
        hung, fine = pool.step([(0, "hang"), (1, "go")])
        assert time.monotonic() - start < 60
        assert "did not answer within timeout_s" in hung.error and fine.error is None
        assert pool.restarts == 1


def test_interrupted_batch_does_not_desync_the_pool(monkeypatch):
    import envs.pool as pool_module

    with _pool(num_envs=2, num_workers=1) as pool:
        pool.reset([(0, 0, None), (1, 1, None)])
        real_receive = pool_module._Worker.receive

        def interrupted_once(self, deadline):  # Ctrl-C while waiting for the step's reply
            monkeypatch.setattr(pool_module._Worker, "receive", real_receive)
            raise KeyboardInterrupt

        monkeypatch.setattr(pool_module._Worker, "receive", interrupted_once)
        with pytest.raises(KeyboardInterrupt):
            pool.step([(0, "first")])
        # The reply to "first" must never be taken for this step's answer.
        assert all("interrupted" in r.error for r in pool.step([(0, "second"), (1, "second")]))
        assert pool.reset([(0, 0, None)])[0].error is None
        assert pool.step([(0, "third")])[0].observation.startswith("third ")


def test_worker_that_cannot_build_its_envs_is_a_clear_error():
    with pytest.raises(RuntimeError, match="could not build its envs.*refuses to build"):
        _pool(num_envs=2, num_workers=1, env_kwargs={"fail": True})


def test_bad_requests_are_clear_errors():
    pool = _pool(num_envs=2, num_workers=0)
    with pytest.raises(IndexError, match="out of range"):
        pool.step([(2, "x")])
    with pytest.raises(ValueError, match="same env index twice"):
        pool.reset([(0, 0, None), (0, 1, None)])
    with pytest.raises(ValueError, match="num_workers"):
        EnvPool(COUNTER_ID, 2, num_workers=-1)
    pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        pool.step([(0, "x")])


def test_max_episode_steps_goes_to_the_env():
    # gymnasium.make would swallow max_episode_steps into a TimeLimit; the pool hands it to the env.
    with _pool(num_envs=1, num_workers=0, env_kwargs={"max_episode_steps": 2}) as pool:
        pool.reset([(0, 0, None)])
        assert [pool.step([(0, "x")])[0].truncated for _ in range(2)] == [False, True]
        assert pool.get_attr("max_episode_steps") == 2


def test_step_result_failed_is_a_finished_episode():
    r = StepResult.failed(3, "boom")
    assert (r.env_index, r.error, r.truncated, r.terminated, r.info["error"]) == (3, "boom", True, False, "boom")


# -- the real ALFWorld env through worker processes ------------------------------------------------------------

HAVE_ALFWORLD = importlib.util.find_spec("alfworld") is not None


@pytest.mark.alfworld
@pytest.mark.skipif(not HAVE_ALFWORLD, reason="alfworld/textworld not installed")
def test_alfworld_pool_survives_a_killed_worker():
    from envs.alfworld.data import default_data_root

    root = default_data_root()
    if root is None or not (root / "json_2.1.1" / "valid_unseen").is_dir():
        pytest.skip("no ALFWorld data root with json_2.1.1/valid_unseen ($ALFWORLD_DATA)")
    kwargs = {"split": "valid_unseen", "max_episode_steps": 60}
    with gym.make("agent_rl/ALFWorld-v0", split="valid_unseen") as direct:
        want = [direct.reset(options={"game": g})[0] for g in (3, 4)]
    with EnvPool("agent_rl/ALFWorld-v0", 2, kwargs, num_workers=2) as pool:
        results = pool.reset([(0, None, {"game": 3}), (1, None, {"game": 4})])
        assert [r.observation for r in results] == want
        assert pool.get_attr("max_episode_steps", 1) == 60 and pool.get_attr("num_tasks") == 134
        os.kill(pool.worker_pids()[0], signal.SIGKILL)
        lost, fine = pool.step([(0, "look"), (1, "look")])
        assert "died" in lost.error and fine.error is None and fine.info["action_valid"]
        assert pool.reset([(0, None, {"game": 3})])[0].observation == want[0]


# -- Ray actors --------------------------------------------------------------------------------------------------



def test_ray_pool_reports_and_restarts_a_killed_actor(ray_local):
    from envs.ray_pool import RayEnvPool

    requests = [(i, 100 + i, None) for i in range(4)]
    with _pool(num_workers=0) as local:
        want = [r.observation for r in local.reset(requests)]
    with RayEnvPool(COUNTER_ID, 4, None, num_workers=2, import_modules=[THIS_MODULE], timeout_s=60) as pool:
        assert [r.observation for r in pool.reset(requests)] == want
        old = pool.worker_pids()
        os.kill(old[0], signal.SIGKILL)  # holds envs 0 and 2
        results = pool.step([(i, "go") for i in range(4)])
        assert [r.error is None for r in results] == [False, True, False, True]
        assert "died" in results[0].error and pool.restarts == 1 and pool.worker_pids()[0] != old[0]
        assert "reset it" in pool.step([(2, "go")])[0].error
        assert pool.reset([(2, 102, None)])[0].observation == want[2]
        assert pool.step([(2, "go")])[0].error is None
        assert pool.get_attr("max_episode_steps", 3) == 1000
