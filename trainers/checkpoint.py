"""Checkpoints: what lets a killed run continue with the same step counter and p.

Data flow: after the optimizer step (and weight sync), the trainer **saves** here; on
start it **restores** from here.

Layout of ``<run_dir>/checkpoints/``::

    step_000002/            model (safetensors, save_pretrained) + tokenizer
                            optimizer.pt, trainer_state.json (step, p, RNG states), config.yaml
    latest                  text file naming the newest complete checkpoint

A checkpoint is written into ``.tmp-step_000002`` and renamed into place only when
complete, then ``latest`` is replaced atomically: a run killed with SIGKILL at any moment
leaves the previous checkpoint intact and loses at most the step in flight.

Safety: nothing is unpickled (``torch.load(weights_only=True)``; RNG states are stored as
lists and tensors for that), ``latest`` may only name a ``step_*`` folder of this run, a
checkpoint is checked before use (its files present, safetensors headers and zip archives
whole, trainer_state.json and the tokenizer's JSON files readable) and a damaged one is passed over, with a warning, for the
newest intact one; a model with a NaN/inf weight is never saved.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

@dataclass
class TrainerState:
    step: int  # steps completed
    p: float  # p used by the last completed step
    rng: dict[str, Any]
    extra: dict[str, Any]


def _rng_state() -> dict[str, Any]:
    """RNG states as lists, numbers and tensors only, so that loading needs no unpickling."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.random.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.random.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        # One state per GPU the saving process saw; a resume may see fewer (another node, fewer ranks,
        # CUDA_VISIBLE_DEVICES): restore those it has, as set_rng_state_all would fail on a missing device.
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set the python, numpy, torch (and CUDA) RNG states of a checkpoint's ``TrainerState.rng`` again (after
    something that reseeds the process, such as starting an in-process vLLM engine); {} does nothing."""
    if state:
        _set_rng_state(state)


def checkpoint_root(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


_STEP_NAME = re.compile(r"step_\d{6,}")


def step_folders(run_dir: str | os.PathLike) -> list[Path]:
    """The run's ``step_N`` checkpoint folders, intact or not, oldest step first (by number: names sort
    wrongly past step 999,999)."""
    root = checkpoint_root(run_dir)
    found = [p for p in root.glob("step_*") if _STEP_NAME.fullmatch(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(p.name[len("step_"):]))


def checkpoint_problem(path: Path, weights_only: bool = False) -> str | None:
    """Why the checkpoint folder ``path`` cannot be used, or None when it is intact (cheap checks:
    files present, safetensors headers and data lengths, zip directories, trainer_state.json, the tokenizer's
    files).
    ``weights_only``: intact enough to load the model (eval, a model to start from), so the optimizer and
    RNG states that only resuming reads may be absent, e.g. deleted to free disk."""
    try:
        meta = json.loads((path / "trainer_state.json").read_text())
        int(meta["step"]), float(meta["p"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"trainer_state.json is unreadable ({type(exc).__name__}: {exc})"
    why = _tokenizer_problem(path, meta.get("tokenizer_files", []))
    if why:
        return why
    if not ((path / "config.json").is_file() or (path / "adapter_config.json").is_file()):
        return "config.json (or a LoRA run's adapter_config.json) is missing"
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        return "no *.safetensors weights"
    for w in weights:
        why = _safetensors_problem(w)
        if why:
            return f"{w.name}: {why}"
    for name in () if weights_only else ("optimizer.pt", "rng.pt"):
        try:
            with zipfile.ZipFile(path / name) as z:
                z.namelist()
        except (OSError, zipfile.BadZipFile) as exc:
            return f"{name} is damaged or missing ({exc})"
    return None


def _tokenizer_problem(path: Path, names) -> str | None:
    """Why the tokenizer files trainer_state.json lists (those save_checkpoint wrote; checkpoints written
    without a tokenizer, or before the list was kept, list none) cannot be loaded: one missing, or a JSON one
    that does not parse (a torn copy)."""
    if not isinstance(names, list) or not all(isinstance(n, str) and n and not n.startswith("/")
                                              and ".." not in n.split("/") for n in names):
        return f"trainer_state.json's tokenizer_files is not a list of paths inside it (got {str(names)[:80]})"
    for name in names:
        f = path / name
        if not f.is_file():
            return f"tokenizer file {name} is missing"
        if name.endswith(".json"):
            try:
                json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                return f"tokenizer file {name} is damaged ({type(exc).__name__}: {exc})"
    return None


def _safetensors_problem(path: Path) -> str | None:
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return "truncated (no header)"
            n = int.from_bytes(head, "little")
            if n > size - 8:
                return "truncated (header runs past the end)"
            header = json.loads(f.read(n))
    except (OSError, ValueError) as exc:
        return f"unreadable header ({exc})"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    if 8 + n + max(ends, default=0) > size:
        return f"truncated ({size} bytes, the header describes {8 + n + max(ends)})"
    return None


def damaged_checkpoints(run_dir: str | os.PathLike, weights_only: bool = False, shown: int = 3) -> str | None:
    """What a run's checkpoints are when :func:`latest_checkpoint` found none intact, for the error that says
    so (train refusing to start over on them, eval refusing to load them): how many step folders, why each of
    the newest ``shown`` is unusable, and what ``latest`` names. None when the run has no step folders."""
    folders = step_folders(run_dir)
    if not folders:
        return None
    why = "; ".join(f"{p.name}: {checkpoint_problem(p, weights_only)}" for p in folders[-shown:][::-1])
    pointer = checkpoint_root(run_dir) / "latest"
    named = f"; checkpoints/latest names {pointer.read_text(encoding='utf-8').strip()[:80]!r}" \
        if pointer.is_file() else ""
    return f"{len(folders)} checkpoint(s), none intact (newest first: {why}{named})"


def latest_checkpoint(run_dir: str | os.PathLike, weights_only: bool = False) -> Path | None:
    """The newest intact checkpoint folder of a run, or None: the one ``latest`` names when it is
    intact, else the highest intact ``step_*`` folder (each damaged one passed over is logged).
    ``weights_only``: for loading the model only (see :func:`checkpoint_problem`); resuming needs all of it."""
    root = checkpoint_root(run_dir)
    candidates: list[Path] = []
    pointer = root / "latest"
    if pointer.is_file():
        name = pointer.read_text().strip()
        if _STEP_NAME.fullmatch(name):
            candidates.append(root / name)
        else:  # only a step folder of this run: never a path elsewhere
            log.warning("%s names %r, not a step_NNNNNN folder of this run; ignoring it", pointer, name[:200])
    candidates += step_folders(run_dir)[::-1]
    seen = set()
    for path in candidates:
        if path in seen or not path.is_dir():
            continue
        seen.add(path)
        why = checkpoint_problem(path, weights_only)
        if why is None:
            return path
        log.warning("checkpoint %s is damaged (%s); trying an older one", path, why)
    return None


def save_checkpoint(
    run_dir: str | os.PathLike, *, model, tokenizer, step: int, p: float, config_yaml: str, optimizer=None,
    optimizer_state: dict | None = None, extra: dict[str, Any] | None = None, keep: int = 2,
) -> Path:
    """Write step ``step`` atomically: ``model``'s weights (a full model), ``optimizer``'s state (or
    ``optimizer_state``, an optimizer state dict already gathered: trainers.distributed), RNG states, config."""
    if (optimizer is None) == (optimizer_state is None):
        raise ValueError("save_checkpoint needs exactly one of optimizer= and optimizer_state=")
    bad = [n for n, t in model.named_parameters() if not bool(torch.isfinite(t).all())]
    if bad:
        raise RuntimeError(
            f"refusing to save step {step}: {len(bad)} weight tensors hold NaN/inf (e.g. {bad[:3]}); the previous "
            f"checkpoint stays the newest. The learner skips non-finite updates, so the weights were loaded or "
            f"edited that way: check the model given to the trainer"
        )
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:06d}"
    tmp = root / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer_files: list[str] = []
    if tokenizer is not None:
        before = {f for f in tmp.rglob("*") if f.is_file()}
        tokenizer.save_pretrained(tmp)
        # named in trainer_state.json so a checkpoint whose tokenizer was lost or torn is passed over as damaged
        # (eval and a run starting from it load the tokenizer from here, and transformers' own errors for a torn
        # tokenizer.json do not name the file)
        # files, also in folders (transformers writes named chat templates to additional_chat_templates/)
        tokenizer_files = sorted(f.relative_to(tmp).as_posix() for f in tmp.rglob("*") if f.is_file() and f not in before)
    torch.save(optimizer.state_dict() if optimizer is not None else optimizer_state, tmp / "optimizer.pt")
    torch.save(_rng_state(), tmp / "rng.pt")
    (tmp / "config.yaml").write_text(config_yaml)
    # trainer_state.json is written last: its presence marks a complete checkpoint.
    (tmp / "trainer_state.json").write_text(json.dumps({"step": step, "p": p, "extra": extra or {},
                                                        "tokenizer_files": tokenizer_files}, indent=2))
    final = root / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    pointer_tmp = root / ".latest.tmp"
    pointer_tmp.write_text(name)
    os.replace(pointer_tmp, root / "latest")
    # Prune the oldest of the steps before this one: a folder of a later step is from a run this one resumed
    # behind (it was damaged), and is replaced when this run gets there. By name, a damaged newer folder
    # outranked the one just written, which was deleted straight away.
    older = [p for p in step_folders(run_dir) if int(p.name[len("step_"):]) < step]
    for old in older[: max(len(older) - (max(keep, 1) - 1), 0)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_trainer_state(path: Path, optimizer=None, load_optimizer=None) -> TrainerState:
    """Read step/p, restore RNG states and (if given) the optimizer from a checkpoint. ``load_optimizer``:
    how to load the saved state dict into ``optimizer`` (default ``optimizer.load_state_dict``; sharded
    optimizers: trainers.distributed)."""
    meta = json.loads((path / "trainer_state.json").read_text())
    try:
        rng = torch.load(path / "rng.pt", weights_only=True)
    except pickle.UnpicklingError:  # written before RNG states were stored unpickle-free: not loaded, never run
        log.warning("%s is in the old pickled format, which is not loaded (it could run code); random states "
                    "start from train.seed instead, so sampling differs from an uninterrupted run", path / "rng.pt")
        rng = {}
    else:
        _set_rng_state(rng)
    if optimizer is not None:
        try:
            # on the CPU: load_state_dict moves each state to its parameter's device (and under FSDP2 every rank
            # reads the file, so GPU 0 must not get a copy per rank)
            state = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu", mmap=True)
        except pickle.UnpicklingError as exc:
            raise RuntimeError(
                f"{path / 'optimizer.pt'} holds objects other than tensors and numbers, so it is not loaded (it "
                f"could run code): {str(exc).splitlines()[0]}. Fix: delete {path} to resume from an older "
                f"checkpoint, or start a new train.run_dir"
            ) from None
        (load_optimizer or optimizer.load_state_dict)(state)
    return TrainerState(step=int(meta["step"]), p=float(meta["p"]), rng=rng, extra=meta.get("extra", {}))
