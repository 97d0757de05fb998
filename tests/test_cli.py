"""The command line: end to end on a tiny recipe, and bad input -> one line, right exit code."""
import dataclasses
import json
import os
import subprocess
import sys

import pytest

from adaptive_lm.cli import main


def run(*args, stdin=None, cwd=None):
    """The real console entry point in a subprocess: exit code, stdout, stderr."""
    p = subprocess.run([sys.executable, "-m", "adaptive_lm", *args], capture_output=True, text=True,
                       input=stdin, cwd=cwd, timeout=300)
    return p.returncode, p.stdout, p.stderr


def assert_one_line_error(rc, err, code, *words):
    assert rc == code, err
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("adaptive-lm") and "error:" in lines[0]
    for w in words:
        assert w in lines[0], lines[0]


def test_train_generate_eval_resume_end_to_end(tmp_path, corpus):
    out = tmp_path / "run"
    rc, so, se = run("train", "tiny-test", f"data.corpus={corpus}", "train.steps=6", "--out", str(out), "--quiet")
    assert rc == 0, se
    res = json.loads(so.strip().splitlines()[-1])
    assert res["step"] == 6 and "val_loss" in res
    ck = out / "checkpoint"
    rc, so, se = run("generate", str(ck), "--prompt", "All:", "--max-new-tokens", "5", "--seed", "1")
    assert rc == 0, se
    assert so.startswith("All:") and len(so.rstrip("\n")) >= 4
    rc, so, se = run("eval", str(ck), "--corpus", str(corpus), "--split", "valid")
    assert rc == 0, se
    assert json.loads(so)["loss"] > 0
    rc, so, se = run("train", "tiny-test", f"data.corpus={corpus}", "train.steps=8", "--out", str(out), "--resume", "--quiet")
    assert rc == 0, se
    assert json.loads(so.strip().splitlines()[-1])["step"] == 8


def test_second_train_into_an_existing_run_is_refused(tmp_path, corpus):
    out = tmp_path / "run"
    assert run("train", "tiny-test", f"data.corpus={corpus}", "train.steps=2", "--out", str(out), "--quiet")[0] == 0
    before = (out / "checkpoint" / "model.safetensors").read_bytes()
    rc, _, se = run("train", "tiny-test", f"data.corpus={corpus}", "--out", str(out))
    assert_one_line_error(rc, se, 2, "--resume")
    assert (out / "checkpoint" / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize("args,code,word", [
    (["train", "no-such-recipe"], 2, "unknown recipe"),
    (["train", "tiny-test", "model.nope=3"], 2, "unknown key"),
    (["train", "tiny-test", "train.steps=abc"], 2, "expected an integer"),
    (["train", "tiny-test", "model.n_head=0"], 2, "n_head must be positive"),
    (["train", "tiny-test", "train.log_every=0"], 2, "log_every"),
    (["train", "tiny-test", "data.seq_len=100"], 2, "exceeds model.max_seq_len"),
    (["train", "tiny-test", "data.corpus=/no/such/file.txt"], 1, "does not exist"),
    (["eval", "builtin:shakespeare-char", "--batch-size", "0"], 2, "batch-size"),
    (["bench", "train", "steps=0"], 2, "steps"),
    (["generate", "/no/such/checkpoint"], 1, "does not exist"),
    (["generate", "builtin:nope"], 1, "no built-in"),
    (["bench", "nope"], 2, "unknown bench"),
    (["bench", "train", "bogus=1"], 2, "unknown bench option"),
    (["generate", "--temperature", "x"], 2, "invalid float"),
])
def test_bad_input_gives_one_clear_line(args, code, word, tmp_path):
    if args[0] == "train":
        args = [*args, "--out", str(tmp_path / "run")]
    rc, _, se = run(*args)
    assert_one_line_error(rc, se, code, word)


def test_empty_corpus_and_corrupt_checkpoint(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    rc, _, se = run("train", "tiny-test", f"data.corpus={empty}", "--out", str(tmp_path / "r"))
    assert_one_line_error(rc, se, 1, "empty")
    assert not (tmp_path / "r").exists()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{broken")
    rc, _, se = run("generate", str(bad))
    assert_one_line_error(rc, se, 1, "corrupt")


def test_generate_reads_the_prompt_from_stdin():
    rc, so, se = run("generate", "builtin:shakespeare-char", "--max-new-tokens", "3", "--temperature", "0", stdin="KING:")
    assert rc == 0, se
    assert so.startswith("KING:")


def test_bench_train_writes_json_with_mfu(tmp_path):
    out = tmp_path / "b.json"
    rc = main(["bench", "train", "--json", str(out), "n_layer=1", "d_model=32", "n_head=2", "seq_len=16",
               "batch_size=2", "vocab_size=64", "steps=2", "warmup=1", "peak_size=128", "precisions=fp32"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert 0 < res["mfu"] < 2 and res["rows"][0]["tokens_per_s"] > 0
    assert res["command"].startswith("adaptive-lm bench train")
    assert res["environment"]["torch"]


def test_recipes_lists_and_describes(capsys):
    assert main(["recipes"]) == 0
    assert "char-shakespeare" in capsys.readouterr().out
    assert main(["recipes", "tiny-test"]) == 0
    assert "train.steps = 20" in capsys.readouterr().out


def test_bench_list_names_every_bench_in_one_column(capsys):
    assert main(["bench", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [ln.split()[0] for ln in lines]
    assert "entropy-aware" in names and "vmd-toy" in names
    starts = {len(ln) - len(ln[len(n):].lstrip()) for ln, n in zip(lines, names)}
    assert len(starts) == 1                       # every description starts in the same column


TINY_BENCH = ["bench", "train", "n_layer=1", "d_model=32", "n_head=2", "seq_len=16", "batch_size=2",
              "vocab_size=64", "steps=2", "warmup=1", "peak_size=128", "precisions=fp32"]


@pytest.mark.parametrize("where", ["before", "after", "env"])
def test_threads_reach_torch_and_the_bench_rerun_command_then_are_restored(where, tmp_path, monkeypatch):
    import torch
    out = tmp_path / "b.json"
    argv = TINY_BENCH + ["--json", str(out)]
    if where == "before":
        argv = ["--threads", "1"] + argv
    elif where == "after":
        argv = argv + ["--threads", "1"]
    else:
        monkeypatch.setenv("ADAPTIVE_LM_THREADS", "1")
    before = torch.get_num_threads()
    assert main(argv) == 0
    res = json.loads(out.read_text())
    assert res["environment"]["threads"] == 1
    assert res["command"].startswith("adaptive-lm --threads 1 bench train")
    assert torch.get_num_threads() == before                       # an in-process call leaves no trace
    assert os.environ.get("ADAPTIVE_LM_THREADS") == ("1" if where == "env" else None)


def test_a_closed_pipe_is_not_a_traceback():
    """`adaptive-lm ... | head`: the reader is gone before the command has written its ~12 KB."""
    p = subprocess.Popen([sys.executable, "-m", "adaptive_lm", "generate", "builtin:shakespeare-char", "--prompt", "A",
                          "--num-samples", "48", "--max-new-tokens", "250"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141 and "Traceback" not in err, err


def test_optional_annotations_become_their_inner_type():
    from typing import Optional
    from adaptive_lm.cli.parser import _unoptional
    assert _unoptional(Optional[float]) is float and _unoptional(float | None) is float
    assert _unoptional(str) is str and _unoptional(Optional[int]) is int


def test_bench_options_also_work_as_flags():
    from adaptive_lm.cli.parser import bench_flags_as_options as conv
    assert conv(["bench", "daedal", "--n", "8", "--init-lengths=32", "--seed", "1", "--json", "o.json", "tau_low=0.3"]) == \
        ["bench", "daedal", "n=8", "init_lengths=32", "--seed", "1", "--json", "o.json", "tau_low=0.3"]
    assert conv(["--threads", "2", "bench", "daedal", "--eos-tail", "-1"]) == ["--threads", "2", "bench", "daedal", "eos_tail=-1"]
    assert conv(["--threads=2", "bench", "compress", "--baselines", "--input", "f"]) == \
        ["--threads=2", "bench", "compress", "baselines=true", "--input", "f"]        # a bool alone; --input stays bench's own
    assert conv(["bench", "daedal", "--nope", "1", "--n"]) == ["bench", "daedal", "--nope", "1", "--n"]   # argparse will say
    assert conv(["generate", "--n", "2"]) == ["generate", "--n", "2"]                  # other commands untouched
    assert conv(["bench", "no-such-bench", "--n", "2"]) == ["bench", "no-such-bench", "--n", "2"]


def test_bench_flag_without_value_is_one_line_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "daedal", "--n"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "unrecognized arguments: --n" in err[0]


def test_bench_list_name_prints_its_options(capsys):
    from adaptive_lm.bench import BENCHES, load_benches
    load_benches()
    for name, (_, cls) in BENCHES.items():
        assert main(["bench", "list", name]) == 0
        lines = capsys.readouterr().out.splitlines()
        fields = [f.name for f in dataclasses.fields(cls)]
        assert [ln.split("=")[0].strip() for ln in lines[1:]] == fields
        assert all(len(ln.split(None, 1)) == 2 for ln in lines[1:]), name      # every option has its comment
    assert main(["bench", "list", "daedal"]) == 0
    assert "  n=16 " in capsys.readouterr().out
