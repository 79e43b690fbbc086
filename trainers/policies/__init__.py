"""Policy backends the rollout samples from (rollout ← policy ← weight sync).

Importing this package registers the built-in backends in :data:`POLICIES`:
``hf`` (transformers, imported here), ``vllm`` (its ``vllm`` import happens only
when a :class:`~trainers.policies.vllm.VLLMPolicy` is built) and ``ray`` (either of
them inside a Ray actor; ``ray`` is imported only when a
:class:`~trainers.policies.ray_actor.RayPolicy` is built).
"""

from trainers.policies.base import POLICIES, Generation, Policy, SamplingParams, make_policy
from trainers.policies import hf as _hf  # noqa: F401  (registers "hf")
from trainers.policies import vllm as _vllm  # noqa: F401  (registers "vllm"; no vllm import yet)
from trainers.policies import ray_actor as _ray_actor  # noqa: F401  (registers "ray"; no ray import yet)

__all__ = ["POLICIES", "Generation", "Policy", "SamplingParams", "make_policy"]
