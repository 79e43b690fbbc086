"""Math problem sets for the math env: benchmark JSONL readers, Hugging Face datasets.

The first link of the data flow (env → rollout → ...): every source becomes a list of
:class:`MathProblem` whose ``answer`` is the reference that :mod:`envs.math.grader`
compares the model's final answer to. Each benchmark keeps its own field names and
answer format (MATH500 ``answer``; Minerva's last ``\\boxed{}`` in ``solution``; GSM8K's
value after ``####``; OlympiadBench's ``final_answer`` list; AMC23's float), so each has a
reader in :data:`BENCHMARKS`. Files live at ``<data_dir>/<benchmark>/<split>.jsonl``;
``data_dir`` defaults to the ``AGENT_RL_MATH_DATA`` environment variable.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from agent_rl.registry import Registry

DATA_DIR_ENV = "AGENT_RL_MATH_DATA"


@dataclass(frozen=True)
class MathProblem:
    """One problem. ``answer`` is the reference final answer as LaTeX/plain text."""

    problem_id: str
    problem: str
    answer: str
    source: str
    task_type: str = ""
    solution: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self) -> None:
        if not self.task_type:
            object.__setattr__(self, "task_type", self.source)


class MathDataError(ValueError):
    """A data file that cannot be read as the benchmark it claims to be."""


@dataclass(frozen=True)
class BenchmarkFormat:
    """How to read one benchmark's rows. ``required`` fields must be in every row;
    ``detect`` tells this format apart from others when a file's format is not named."""

    name: str
    required: tuple[str, ...]
    convert: Callable[[dict[str, Any], int], MathProblem]  # (row, line number) → problem
    detect: Callable[[dict[str, Any]], bool]
    description: str


# benchmark name (= its folder under data_dir) → reader.
BENCHMARKS: Registry[BenchmarkFormat] = Registry("math benchmark")


def _register(name: str, required: tuple[str, ...], description: str, detect: Callable[[dict], bool] | None = None):
    def decorator(convert: Callable[[dict[str, Any], int], MathProblem]):
        fmt = BenchmarkFormat(name, required, convert, detect or (lambda row: set(required) <= set(row)), description)
        BENCHMARKS.register(name)(fmt)
        return convert

    return decorator


def _text(value: Any, what: str) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, (list, tuple, dict)):
        raise ValueError(f"{what} is {value!r:.80}, expected text or a number (several answers: write them as one "
                         f"string, e.g. \"1, 2\")")
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    text = str(value).strip()
    if not text:
        raise ValueError(f"{what} is empty")
    return text


def last_boxed(text: str) -> str | None:
    from envs.math.grader import extract_boxed

    return extract_boxed(text)


@_register("math500", ("problem", "answer", "unique_id"), "MATH500: problem, solution, answer, subject, level, unique_id")
def _math500(row: dict, line: int) -> MathProblem:
    return MathProblem(
        problem_id=f"math500/{row['unique_id']}",
        problem=_text(row["problem"], "problem"),
        answer=_text(row["answer"], "answer"),
        source="math500",
        solution=row.get("solution"),
        metadata={k: row[k] for k in ("subject", "level") if k in row},
    )


def _problem_answer(source: str) -> Callable[[dict, int], MathProblem]:
    def convert(row: dict, line: int) -> MathProblem:
        pid = row.get("id", line)
        return MathProblem(
            problem_id=f"{source}/{pid}",
            problem=_text(row.get("problem", row.get("question")), "problem"),
            answer=_text(row["answer"], "answer"),
            source=source,
            solution=row.get("solution"),
            metadata={"url": row["url"]} if "url" in row else {},
        )

    return convert


for _name, _desc in (
    ("aime24", "AIME 2024: id, problem, answer (an integer as text), solution, url"),
    ("amc23", "AMC 2023: id, problem, answer (a number), url"),
):
    _register(_name, ("problem", "answer"), _desc)(_problem_answer(_name))


@_register(
    "minerva_math",
    ("problem", "solution"),
    "Minerva math: idx, problem, solution (final answer in the last \\boxed{}), type",
    detect=lambda row: {"problem", "solution"} <= set(row) and "answer" not in row,
)
def _minerva(row: dict, line: int) -> MathProblem:
    solution = _text(row["solution"], "solution")
    answer = last_boxed(solution)
    if answer is None:
        raise ValueError("solution has no \\boxed{...} final answer")
    return MathProblem(
        problem_id=f"minerva_math/{row.get('idx', line)}",
        problem=_text(row["problem"], "problem"),
        answer=answer,
        source="minerva_math",
        solution=solution,
        metadata={"type": row["type"]} if "type" in row else {},
    )


@_register(
    "olympiadbench",
    ("question", "final_answer"),
    "OlympiadBench: id, question, context, solution (list), final_answer (list of LaTeX strings), unit, "
    "answer_type, is_multiple_answer",
)
def _olympiadbench(row: dict, line: int) -> MathProblem:
    finals = row["final_answer"]
    if isinstance(finals, str):
        finals = [finals]
    if not isinstance(finals, list) or not finals:
        raise ValueError(f"final_answer is {finals!r}, expected a non-empty list of answers")
    question = _text(row["question"], "question")
    context = row.get("context")
    solution = row.get("solution")
    return MathProblem(
        problem_id=f"olympiadbench/{row.get('id', line)}",
        problem=f"{context}\n\n{question}" if context else question,
        # Several answers ("$69$,$84$") are one set; math-verify compares sets order-free.
        answer=", ".join(_text(a, "final_answer item") for a in finals),
        source="olympiadbench",
        solution="\n\n".join(solution) if isinstance(solution, list) else solution,
        metadata={k: row[k] for k in ("unit", "answer_type", "is_multiple_answer", "subfield") if k in row},
    )


@_register(
    "gsm8k",
    ("question", "answer"),
    "GSM8K: question, answer (worked solution ending in '#### <final value>')",
    detect=lambda row: {"question", "answer"} <= set(row) and "####" in str(row["answer"]),
)
def _gsm8k(row: dict, line: int) -> MathProblem:
    worked = _text(row["answer"], "answer")
    if "####" not in worked:
        raise ValueError("answer has no '#### <final value>' line")
    final = worked.rsplit("####", 1)[1].strip().replace(",", "")
    return MathProblem(
        problem_id=f"gsm8k/{row.get('idx', line)}",
        problem=_text(row["question"], "question"),
        answer=_text(final, "the value after ####"),
        source="gsm8k",
        solution=worked,
    )


@_register(
    "jsonl",
    ("answer",),
    "any JSONL with a 'problem' (or 'question') and an 'answer' field, optional 'id'",
    detect=lambda row: "answer" in row and ("problem" in row or "question" in row),
)
def _generic(row: dict, line: int) -> MathProblem:
    return _problem_answer("jsonl")(row, line)


# Order of autodetection: most specific first; the generic reader last.
_DETECT_ORDER = ("olympiadbench", "gsm8k", "minerva_math", "math500", "aime24", "jsonl")


def detect_format(row: dict[str, Any]) -> BenchmarkFormat | None:
    for name in _DETECT_ORDER:
        fmt = BENCHMARKS.get(name)
        if fmt.detect(row):
            return fmt
    return None


def read_rows(rows: Iterable[tuple[int, dict[str, Any]]], where: str, fmt: BenchmarkFormat | None) -> list[MathProblem]:
    """Convert (line number, row) pairs; ``where`` names the source in errors."""
    problems: list[MathProblem] = []
    for line, row in rows:
        if not isinstance(row, dict):
            raise MathDataError(f"{where}:{line}: expected a JSON object, got {type(row).__name__}; "
                                "each line must be one problem as a JSON object")
        if fmt is None:
            fmt = detect_format(row)
            if fmt is None:
                raise MathDataError(
                    f"{where}:{line}: cannot tell which benchmark format this is (fields: {sorted(row)}). "
                    f"Known formats: " + "; ".join(BENCHMARKS.get(n).description for n in BENCHMARKS.names())
                    + ". Name the format (dataset_format=...) or give the rows 'problem' and 'answer' fields."
                )
        missing = [k for k in fmt.required if k not in row]
        try:
            if missing:
                raise ValueError(f"missing field(s) {missing}")
            problems.append(fmt.convert(row, line))
        except (ValueError, TypeError, KeyError) as exc:
            raise MathDataError(
                f"{where}:{line}: not a valid {fmt.name} row: {exc} (fields present: {sorted(row)}). "
                f"Expected {fmt.description}. Fix or remove this line."
            ) from None
    if not problems:
        raise MathDataError(f"{where}: no problems found (empty file?); expected one JSON object per line")
    return problems


def load_jsonl(path: str | os.PathLike, dataset_format: str | None = None) -> list[MathProblem]:
    """Read one JSONL file; its format is ``dataset_format``, else its folder's benchmark name,
    else detected from the first row's fields."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"math data file {str(path)!r} does not exist")
    if dataset_format is None and path.parent.name in BENCHMARKS:
        dataset_format = path.parent.name
    fmt = BENCHMARKS.get(dataset_format) if dataset_format else None

    def rows():
        with path.open("rb") as f:
            for line_no, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise MathDataError(
                        f"{path}:{line_no}: not UTF-8 text ({exc.reason} at byte {exc.start} of the line); JSONL is "
                        f"UTF-8. Fix: re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
                    ) from None
                if not line.strip():
                    continue
                try:
                    yield line_no, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise MathDataError(
                        f"{path}:{line_no}: not valid JSON ({exc.msg} at column {exc.colno}); expected one JSON "
                        "object per line (JSONL). Fix or remove this line."
                    ) from None

    return read_rows(rows(), str(path), fmt)


def default_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    if data_dir is not None:
        return Path(data_dir)
    env = os.environ.get(DATA_DIR_ENV)
    if not env:
        raise MathDataError(
            f"no math data folder given: pass data_dir=... or set {DATA_DIR_ENV} to a folder holding "
            f"<benchmark>/<split>.jsonl (benchmarks: {', '.join(BENCHMARKS.names())})"
        )
    return Path(env)


def load_benchmark(name: str, data_dir: str | os.PathLike | None = None, split: str = "test") -> list[MathProblem]:
    """``<data_dir>/<name>/<split>.jsonl`` read with the ``name`` benchmark's reader."""
    BENCHMARKS.get(name)  # unknown name → did-you-mean error before touching the disk
    path = default_data_dir(data_dir) / name / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"benchmark {name!r} not found at {path}; expected <data_dir>/{name}/{split}.jsonl "
            f"(data_dir from the argument or ${DATA_DIR_ENV})"
        )
    return load_jsonl(path, name)


def load_hf(spec: str, split: str = "test", dataset_format: str | None = None) -> list[MathProblem]:
    """A Hugging Face dataset: ``spec`` is ``<id>`` or ``<id>:<config>``; rows read as by
    :func:`load_jsonl` (format named, else detected)."""
    try:
        import datasets
    except ImportError:
        raise ImportError(
            f"dataset 'hf:{spec}' needs the Hugging Face `datasets` package: pip install datasets "
            "(or download the data as JSONL and pass its path)"
        ) from None
    repo, _, config = spec.partition(":")
    if not repo:
        raise ValueError(f"'hf:' needs a dataset id, e.g. 'hf:HuggingFaceH4/MATH-500', got 'hf:{spec}'")
    ds = datasets.load_dataset(repo, config or None, split=split)
    fmt = BENCHMARKS.get(dataset_format) if dataset_format else None
    return read_rows(((i + 1, dict(row)) for i, row in enumerate(ds)), f"hf:{spec}[{split}] row", fmt)


def load_dataset(
    dataset: str,
    *,
    data_dir: str | os.PathLike | None = None,
    split: str = "test",
    dataset_format: str | None = None,
) -> list[MathProblem]:
    """Resolve the env's ``dataset`` kwarg (other than ``"generated"``): ``"hf:<id>"``, a
    benchmark name, or a path to a JSONL file."""
    if dataset.startswith("hf:"):
        return load_hf(dataset[3:], split, dataset_format)
    if dataset in BENCHMARKS:
        return load_benchmark(dataset, data_dir, split)
    if dataset.endswith(".jsonl") or os.sep in dataset or Path(dataset).is_file():
        return load_jsonl(dataset, dataset_format)
    BENCHMARKS.get(dataset)  # raises with did-you-mean
    raise AssertionError("unreachable")
