"""Bad input across the command line, run in process (no torch import per case): one error line,
exit code 2 (usage) or 1, no traceback, and nothing the user had is overwritten or half-written.
Each case fails before any real work, so the whole file takes seconds."""
import json

import pytest

from adaptive_lm.cli import main


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.err


def _one_line(rc, err, code, *words):
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert rc == code, err
    assert len(lines) == 1 and lines[0].startswith("adaptive-lm: error:"), err
    for w in words:
        assert w in lines[0], lines[0]


@pytest.fixture
def here(tmp_path, monkeypatch):
    """A working folder with a text file, a folder, and a file where a folder is expected; no data
    folder, so a case that reads data before checking its options fails on the wrong message."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ADAPTIVE_LM_DATA", str(tmp_path / "no-data"))
    (tmp_path / "in.txt").write_text("x = 1\n")
    (tmp_path / "adir").mkdir()
    (tmp_path / "adir" / "keep").write_text("keep")
    return tmp_path


@pytest.mark.parametrize("argv,code,words", [
    # a model of another family where a causal / masked-diffusion LM is needed
    (["eval", "builtin:mdm-sudoku"], 2, ["VMD-family", "sudoku solve", "not a causal or masked diffusion LM"]),
    (["generate", "builtin:eem-pydocs", "--prompt", "x"], 2, ["entropy estimation model", "adaptive-lm entropy"]),
    (["calibrate", "builtin:vmd-toy", "--out", "c.json"], 2, ["VMD-family"]),
    (["bench", "daedal", "model=builtin:mdm-sudoku"], 2, ["VMD-family"]),
    # options that were ignored or silently replaced
    (["eval", "builtin:mdlm-arith", "--split", "train"], 2, ["do not apply"]),
    (["generate", "builtin:shakespeare-char", "--temperature", "-2"], 2, ["--temperature"]),
    (["generate", "builtin:shakespeare-char", "--top-k", "-3"], 2, ["--top-k must be >= 0, not -3"]),
    (["generate", "builtin:mdlm-arith", "--prompt", "x", "--top-k", "5"], 2, ["--top-k", "ar or calm"]),
    (["eval", "builtin:shakespeare-char", "--split", "bogus"], 2, ["unknown split 'bogus'"]),
    (["generate", "builtin:shakespeare-char", "--num-samples", "0"], 2, ["--num-samples must be >= 1"]),
    (["generate", "builtin:shakespeare-char", "--prompt", "x", "--show-exits"], 2, ["--show-exits", "--method calm"]),
    (["generate", "builtin:shakespeare-char", "--prompt", "x", "--kv", "recompute"], 2, ["--kv", "--method calm"]),
    (["generate", "builtin:shakespeare-char", "--temperature", "-1"], 2, [">= 0, not -1.0"]),
    (["generate", "builtin:shakespeare-char", "--temperature", "nan"], 2, ["--temperature"]),
    (["generate", "builtin:shakespeare-char", "--prompt", "x", "--method", "calm", "--threshold", "-1"], 2, ["[0, 1]"]),
    (["generate", "builtin:shakespeare-char", "--prompt", "x", "--threshold", "0.5"], 2, ["--method calm or threshold"]),
    (["generate", "builtin:shakespeare-char", "--prompt", "x", "--threshold", "1.5"], 2, ["[0, 1]"]),
    (["bench", "vmd-toy", "readout=max"], 2, ["readout"]),
    (["bench", "vmd-toy", "datasets=pair", "blocks=2"], 2, ["no setting", "pair B=1"]),
    # bench options checked before any work
    (["bench", "train", "n_layer=-1"], 2, ["n_layer must be >= 1"]),
    (["bench", "train", "n_head=3", "d_model=16"], 2, ["divisible"]),
    (["bench", "train", "threads=-1"], 2, ["threads"]),
    (["--threads", "-1", "bench", "list"], 2, ["--threads", ">= 0"]),
    (["bench", "daedal", "device=tpu"], 2, ["device=tpu"]),
    (["bench", "eem", "mixer=bogus"], 2, ["mixer"]),
    (["bench", "eem", "compression=0"], 2, ["compression"]),
    (["bench", "eem", "injections=bogus"], 2, ["injections=bogus"]),
    (["bench", "vmd-toy", "blocks=0"], 2, ["blocks=0"]),
    (["bench", "vmd-toy", "samples=0"], 2, ["samples"]),
    (["bench", "vmd-sudoku", "policies=bogus"], 2, ["policies=bogus"]),
    (["bench", "vmd-sudoku", "nfes=0"], 2, ["nfes=0"]),
    (["bench", "vmd-sudoku", "generator=C"], 2, ["generator"]),
    (["bench", "vmd-sudoku", "device=tpu"], 2, ["device=tpu"]),
    (["bench", "vmd-sudoku", "device=mps"], 2, ["device=mps", "cuda:N"]),
    (["bench", "daedal", "device=meta"], 2, ["device=meta"]),
    (["bench", "vmd-sudoku", "level=HARD"], 2, ["level must be one of"]),
    (["train", "vmd-toy", "data.level=bogus"], 2, ["data.level must be one of"]),
    (["bench", "vmd-sudoku", "mdm=builtin:shakespeare-char"], 2, ["not a Sudoku model"]),
    (["bench", "vmd-text", "blocks=abc"], 2, ["expected comma-separated integers"]),
    (["bench", "vmd-text", "seq_len=0"], 2, ["seq_len"]),
    (["bench", "compress", "max_bytes=-1"], 2, ["max_bytes"]),
    (["bench", "calm", "deltas=0.1,1.5"], 2, ["deltas", "(0, 1)"]),
    (["bench", "calm", "device=tpu"], 2, ["device=tpu"]),
    # outputs that cannot be written: refused up front
    (["entropy", "in.txt", "-o", "nodir/x.json"], 2, ["no such folder"]),
    (["entropy", "in.txt", "-o", "same.x", "--html", "same.x"], 2, ["same file"]),
    (["report", "in.txt", "-o", "adir", "--force"], 2, ["is a folder"]),
    (["report", "adir"], 2, ["is a folder, not a file"]),
    (["sudoku", "generate", "-o", "adir", "--n", "1", "--force"], 2, ["is a folder"]),
    (["sudoku", "generate", "-o", "nodir/g.csv", "--n", "1"], 2, ["no such folder"]),
    (["sudoku", "solve", "5" * 81, "--n", "5"], 2, ["--n applies to `sudoku generate`"]),
    (["sudoku", "generate", "-o", "g.csv", "--nfe", "5"], 2, ["--nfe applies to `sudoku solve`"]),
    (["compress", "in.txt", "-o", "adir", "--force"], 2, ["is a folder"]),
    (["compress", "in.txt", "-o", "in.txt/x.almz"], 2, ["is not a folder"]),
    (["compress", "adir"], 2, ["is a folder, not a file"]),
    (["bench", "train", "--json", "adir"], 2, ["is a folder"]),
    (["bench", "train", "--json", "in.txt/b.json"], 2, ["is not a folder"]),
    (["calibrate", "builtin:calm-pydocs", "--out", "in.txt/c.json"], 2, ["is not a folder"]),
    (["bench", "train", "--json", "/dev/null"], 2, ["not a regular file"]),
    (["bench", "compress", "input=in.txt", "--json", "in.txt"], 2, ["overwrite the input"]),
    (["bench", "eem", "eval_format=fp16,int8"], 2, ["eval_format"]),
    (["bench", "train", "--json", "in.txt"], 2, ["not a bench result"]),
    (["calm-classifier", "builtin:calm-arith", "--out", "cc", "--lr", "nan"], 2, ["--lr", "finite"]),
    (["train", "tiny-test", "train.lr=nan"], 2, ["lr must be a finite number"]),
    (["train", "tiny-test", "train.beta1=2"], 2, ["beta1 must be in [0, 1)"]),
    (["train", "tiny-test", "data.holdout=1.5"], 2, ["holdout must be in (0, 1)"]),
    (["train", "tiny-test", "model.vocab_size=10"], 2, ["model.vocab_size is set by the recipe"]),
    (["bench", "entropy-aware", "d_model=130"], 2, ["divisible"]),
    (["bench", "entropy-aware", "objectives=ce,bogus"], 2, ["objectives"]),
    (["bench", "daedal", "lengths=0"], 2, ["lengths=0"]),
    (["bench", "calm", "measures=oracle"], 2, ["measures=oracle"]),
    (["train", "tiny-test", "--out", "in.txt"], 2, ["is a file"]),
    (["calm-classifier", "builtin:calm-pydocs", "--out", "in.txt", "--steps", "1"], 2, ["is a file"]),
    (["demo", "--out", "in.txt"], 2, ["is a file"]),
])
def test_bad_input_is_one_line_before_any_work(here, capsys, argv, code, words):
    before = {p: p.read_bytes() for p in here.rglob("*") if p.is_file()}
    rc, err = _run(capsys, *argv)
    _one_line(rc, err, code, *words)
    after = {p: p.read_bytes() for p in here.rglob("*") if p.is_file()}
    assert after == before                                  # nothing written, nothing changed


def test_entropy_never_overwrites_its_input_nor_leaves_half_its_outputs(here, capsys):
    rc, err = _run(capsys, "entropy", "in.txt", "--html", "in.txt", "--force")
    _one_line(rc, err, 2, "overwrite the input")
    assert (here / "in.txt").read_text() == "x = 1\n"
    rc, err = _run(capsys, "entropy", "in.txt", "-o", "part.json", "--html", "nodir/x.html")
    _one_line(rc, err, 2, "--html", "no such folder")
    assert not (here / "part.json").exists()


@pytest.mark.parametrize("stored,word", [([1, 2], "a JSON list"), ({"threshold": "abc"}, "threshold"),
                                         ({"threshold": 0.5, "every": 0}, "every"), ({"kv": 3}, "kv"),
                                         ({"decay": "bogus"}, "decay"), ({"measure": "bogus"}, "measure"),
                                         ({"measure": "oracle"}, "measure"), ({"consistency": "semantic"}, "consistency")])
def test_a_malformed_calm_json_is_one_line(here, capsys, stored, word):
    (here / "bad.json").write_text(json.dumps(stored))
    rc, err = _run(capsys, "generate", "builtin:calm-pydocs", "--method", "calm", "--calm", "bad.json",
                   "--prompt", "The ", "--max-new-tokens", "2")
    _one_line(rc, err, 2, "not a calm.json", word)


def test_a_broken_calm_json_in_the_model_folder_is_one_line(here, capsys):
    import shutil
    from adaptive_lm.checkpoint import resolve
    shutil.copytree(resolve("builtin:calm-pydocs"), here / "ck")
    (here / "ck" / "calm.json").write_text('{"threshold": 0.5,')
    rc, err = _run(capsys, "generate", "ck", "--method", "calm", "--prompt", "The ", "--max-new-tokens", "2")
    _one_line(rc, err, 2, "calm.json", "is not JSON")


def test_an_unwritable_output_is_one_line_and_leaves_nothing(tmp_path):
    """An OS failure during the write itself (here: the target turned into a folder after the
    checks) is one AdaptiveLMError naming the file; the temp file is gone."""
    from adaptive_lm.errors import AdaptiveLMError
    from adaptive_lm.io import atomic_write_text
    target = tmp_path / "out.json"
    target.mkdir()
    with pytest.raises(AdaptiveLMError, match="cannot write"):
        atomic_write_text(target, "{}")
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_a_bad_threads_variable_is_one_line(capsys, monkeypatch):
    monkeypatch.setenv("ADAPTIVE_LM_THREADS", "two")
    rc, err = _run(capsys, "bench", "list")
    _one_line(rc, err, 2, "ADAPTIVE_LM_THREADS", "'two'")
    monkeypatch.setenv("ADAPTIVE_LM_THREADS", "-3")
    rc, err = _run(capsys, "bench", "list")
    _one_line(rc, err, 2, "ADAPTIVE_LM_THREADS must be >= 0")
