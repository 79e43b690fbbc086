"""Evaluation: the last arrow of the data flow (env → rollout → ... → weight sync → eval).

:func:`eval.runner.evaluate` plays a fixed, documented list of episodes (:mod:`eval.tasks`) with the
same policies, prompts and rollout engine as training (:mod:`eval.model_policies`; the expert and
random baselines: :mod:`eval.action_policies`), writing each episode to episodes.jsonl as it ends;
:mod:`eval.report` turns the finished episodes into results (success rates with Wilson intervals,
pass@k, JSON/CSV, a console table); :mod:`eval.plots` draws them. ``python -m agent_rl.eval`` is the
command line.

Import submodules explicitly (``from eval.runner import evaluate``): the package name shadows
the builtin ``eval`` only as a module path, never as a bare ``import eval``.
"""
