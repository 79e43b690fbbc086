"""The math environment, ``agent_rl/Math-v0`` (the env at the start of the data flow).

One problem per episode: the observation is the problem, the action is the model's
reply, the reward comes from :mod:`envs.math.grader` (math-verify). Problems come from
:mod:`envs.math.generated` (default, offline) or :mod:`envs.math.datasets` (benchmarks,
JSONL files, Hugging Face).
"""

from __future__ import annotations

import logging

import os
from typing import Any, Sequence

import gymnasium
import numpy as np

from agent_rl.registry import RegistryError
from envs.math.datasets import BENCHMARKS, MathProblem, load_dataset
from envs.math.generated import generate_problems
from envs.math.grader import EXTRACTOR_INSTRUCTIONS, Extractor, grade, get_extractor, unparseable_references
from envs.spaces import UnicodeText

log = logging.getLogger(__name__)

DEFAULT_NUM_GENERATED = 1000


class MathEnv(gymnasium.Env[str, str]):
    """Answer a math problem; reward 1 when the final answer is right.

    ## Description
    Each episode poses one math problem (generated arithmetic/algebra, or a benchmark
    problem: MATH500, AIME24, AMC23, Minerva, OlympiadBench, GSM8K, any JSONL, a
    Hugging Face dataset). The agent replies in free text and marks its final answer
    (by default with ``\\boxed{...}``); math-verify judges it against the reference, so
    ``\\frac{1}{2}`` and ``0.5``, or ``x = 3`` and ``3``, are the same answer.

    ## Action Space
    :class:`envs.spaces.UnicodeText`: any string, the model's whole reply.

    ## Observation Space
    :class:`envs.spaces.UnicodeText`: the problem followed by the answer-format
    instruction; after a wrong attempt in multi-attempt mode, feedback asking to try again.

    ## Rewards
    ``reward_scale`` (default 1.0) when the extracted final answer is equivalent to the
    reference, else 0. A reply with no extractable final answer gets 0 and
    ``info["action_valid"] = False``. Grading that errors or overruns
    ``grade_timeout_s`` counts as wrong (``info["grade_error"]`` says why).

    ## Starting State
    ``reset(seed=s)`` picks problem ``np_random(s).integers(num_tasks)``: the same seed
    gives the same problem. ``options={"problem": i}`` (or the generic ``{"task": i}``)
    picks problem ``i`` of ``task_ids``.

    ## Episode End
    ``terminated`` when the answer is right or after ``max_attempts`` attempts (an
    attempt with no final answer counts). ``truncated`` is never set by the env itself
    (attempts are the task's own rule); a TimeLimit wrapper may set it.

    ## Arguments
    - ``dataset``: ``"generated"`` (default), a benchmark name (``math500``, ``aime24``,
      ``amc23``, ``minerva_math``, ``olympiadbench``, ``gsm8k``), a path to a JSONL file,
      or ``"hf:<id>[:<config>]"`` (needs the ``datasets`` package).
    - ``data_dir``: folder holding ``<benchmark>/<split>.jsonl``; default ``$AGENT_RL_MATH_DATA``.
    - ``split``: benchmark split file / HF split (default ``"test"``).
    - ``dataset_format``: reader for a JSONL path or HF dataset (default: detected).
    - ``level``: generated difficulty, 1..5 or a list (default 1: "What is 7 + 12?").
    - ``num_problems``: generated set size (default 1000); for other datasets, keep the first N.
    - ``seed``: seeds the generated problem set (not the episode; that is ``reset(seed)``).
    - ``max_attempts``: attempts per problem (default 1); later attempts follow feedback.
    - ``reward_scale``: reward for a right answer (default 1.0).
    - ``extractor``: final-answer extractor name (``boxed``, ``hash``, ``answer_is``,
      ``last_number``) or a callable ``str -> str | None``.
    - ``instruction``: text appended to each problem; default matches the extractor; ``""`` for none.
    - ``grade_timeout_s``: time bound for grading one reply (default 5).

    ## Version History
    - v0: initial version.
    """

    metadata = {"render_modes": ["ansi"], "prompt_template": "math"}

    def __init__(
        self,
        dataset: str = "generated",
        *,
        data_dir: str | os.PathLike | None = None,
        split: str = "test",
        dataset_format: str | None = None,
        level: int | Sequence[int] = 1,
        num_problems: int | None = None,
        seed: int = 0,
        max_attempts: int = 1,
        reward_scale: float = 1.0,
        extractor: str | Extractor = "boxed",
        instruction: str | None = None,
        grade_timeout_s: float = 5.0,
        problems: Sequence[MathProblem] | None = None,
        render_mode: str | None = None,
    ):
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"max_attempts must be an int >= 1, got {max_attempts!r}")
        if num_problems is not None and (not isinstance(num_problems, int) or num_problems < 1):
            raise ValueError(f"num_problems must be a positive int or None, got {num_problems!r}")
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self._extract = get_extractor(extractor)  # unknown name → did-you-mean error now, not mid-rollout
        self.extractor = extractor
        if instruction is None:
            instruction = EXTRACTOR_INSTRUCTIONS.get(extractor, "") if isinstance(extractor, str) else ""
        self.instruction = instruction
        self.max_attempts = max_attempts
        self.reward_scale = float(reward_scale)
        self.grade_timeout_s = float(grade_timeout_s)
        self.render_mode = render_mode

        if problems is not None:  # programmatic use: a ready list
            self.problems = list(problems)
        elif dataset == "generated":
            self.problems = generate_problems(num_problems or DEFAULT_NUM_GENERATED, level=level, seed=seed)
        else:
            try:
                self.problems = load_dataset(dataset, data_dir=data_dir, split=split, dataset_format=dataset_format)
            except RegistryError as exc:
                raise ValueError(
                    f"{exc} The math env's dataset is 'generated', a benchmark name "
                    f"({', '.join(BENCHMARKS.names())}), a path to a .jsonl file, or 'hf:<id>'."
                ) from None
            if num_problems is not None:
                self.problems = self.problems[:num_problems]
        if not self.problems:
            raise ValueError("the math env has no problems to pose (empty problem list)")
        self.dataset = dataset
        # A reference math-verify cannot parse fails every grade: say so now, once, not one wrong answer at a time.
        self.unparseable_references = unparseable_references(self.problems)
        if self.unparseable_references:
            ids = [self.problems[i].problem_id for i in self.unparseable_references]
            log.warning("math env (%s): %d reference answer(s) cannot be parsed by math-verify, so those problems "
                        "can never be graded correct: %s%s. Fix the answers in the data, or drop those problems",
                        dataset if problems is None else "given problems", len(ids), ", ".join(ids[:5]),
                        " ..." if len(ids) > 5 else "")

        self.observation_space = UnicodeText()
        self.action_space = UnicodeText()
        self._problem: MathProblem | None = None
        self._attempts = 0
        self._done = True
        self._last_obs = ""

    # The env contract's task list.
    @property
    def num_tasks(self) -> int:
        return len(self.problems)

    @property
    def task_ids(self) -> list[str]:
        return [p.problem_id for p in self.problems]

    def _observation(self, problem: MathProblem) -> str:
        return f"{problem.problem}\n\n{self.instruction}" if self.instruction else problem.problem

    def _base_info(self) -> dict[str, Any]:
        p = self._problem
        assert p is not None
        return {
            "task": p.problem,
            "task_id": p.problem_id,
            "task_type": p.task_type,
            "reference_answer": p.answer,
            "attempts": self._attempts,
            "max_attempts": self.max_attempts,
            "won": False,
            "success": False,
        }

    def _pick(self, options: dict[str, Any] | None) -> int:
        options = dict(options or {})
        keys = [k for k in ("problem", "task") if k in options]
        unknown = set(options) - {"problem", "task"}
        if unknown:
            raise ValueError(f"unknown reset option(s) {sorted(unknown)} for the math env; "
                             "use {'problem': i} or {'task': i}")
        if len(keys) == 2 and options["problem"] != options["task"]:
            raise ValueError(f"reset options give two problems ({options}); pass only one of 'problem'/'task'")
        if not keys:
            return int(self.np_random.integers(self.num_tasks))
        index = options[keys[0]]
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"reset option {keys[0]!r} must be an int problem index, got {index!r}")
        if not 0 <= index < self.num_tasks:
            raise IndexError(f"reset option {keys[0]}={index} is out of range: this math env has "
                             f"{self.num_tasks} problems (0..{self.num_tasks - 1})")
        return int(index)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        self._problem = self.problems[self._pick(options)]
        self._attempts = 0
        self._done = False
        self._last_obs = self._observation(self._problem)
        return self._last_obs, self._base_info()

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self._problem is None or self._done:
            raise RuntimeError("MathEnv.step() called before reset() or after the episode ended; call reset() first")
        if not isinstance(action, str):
            raise TypeError(f"the math env's action is the model's reply as a str, got {type(action).__name__}")
        self._attempts += 1
        verdict = grade(action, self._problem.answer, extractor=self._extract, timeout_s=self.grade_timeout_s)
        won = verdict.correct
        terminated = won or self._attempts >= self.max_attempts
        self._done = terminated
        info = self._base_info()
        info.update(
            won=won,
            success=won,
            action_valid=verdict.valid,
            extracted_answer=verdict.extracted,
            grade_timed_out=verdict.timed_out,
            grade_error=verdict.error,
        )
        if terminated:
            obs = "Correct." if won else f"Incorrect. The episode is over after {self._attempts} attempt(s)."
        elif not verdict.valid:
            # No format reminder here: the first observation (or the prompt template) has it.
            obs = "No final answer found in your reply. Try again."
        else:
            obs = f"Your answer {verdict.extracted} is incorrect. Try again."
        self._last_obs = obs
        return obs, self.reward_scale if won else 0.0, terminated, False, info

    def render(self) -> str | None:
        if self.render_mode == "ansi":
            return self._last_obs
        return None
