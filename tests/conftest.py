"""Test setup: no network, one thread, offline Hugging Face, GPU tests skip without CUDA."""

from __future__ import annotations

import os

# Set before torch/transformers are imported by any test module.
os.environ.setdefault("OMP_NUM_THREADS", "1")  # 2 threads under contention ran ~100x slower here
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import importlib.util
import socket

import pytest


class _NetworkBlocked(RuntimeError):
    pass


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _is_local(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = address[0] if isinstance(address, tuple) and address else ""
    return host in ("localhost", "::1", "") or str(host).startswith("127.")


def _guarded_connect(self, address):
    if not _is_local(address):
        raise _NetworkBlocked(f"tests must not touch the network (tried to connect to {address!r})")
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    if not _is_local(address):
        raise _NetworkBlocked(f"tests must not touch the network (tried to connect to {address!r})")
    return _real_connect_ex(self, address)


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    torch = None


def pytest_collection_modifyitems(config, items):
    has_cuda = torch is not None and torch.cuda.is_available()
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; CI has none")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="module")
def ray_local():
    """A local 2-CPU Ray for one test module; its workers import the test modules (env entry points)."""
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray not installed (pip install 'agent-rl[ray]')")
    import ray

    tests_dir = os.path.dirname(os.path.abspath(__file__))
    path = os.pathsep.join([tests_dir, *filter(None, [os.environ.get("PYTHONPATH")])])
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()
