"""`adaptive-lm sudoku`, `train vmd-*` and the three VMD benches on tiny settings: exit codes, one-line
errors, no grid presented unless valid, every bench row present and the JSON written."""
import dataclasses
import json

import pytest
import torch

from adaptive_lm.checkpoint import save_pretrained
from adaptive_lm.cli import main
from adaptive_lm.model import ModelConfig
from adaptive_lm.tasks import sudoku as S
from adaptive_lm.tokenizer import CharTokenizer
from adaptive_lm.vmd.model import VMD, VMDConfig

from ..conftest import TEXT


@pytest.fixture(scope="module")
def sudoku_ckpts(tmp_path_factory):
    """An untrained VMD and MDM with the Sudoku features, saved as checkpoints."""
    root = tmp_path_factory.mktemp("sudoku")
    base = ModelConfig(vocab_size=13, n_layer=1, n_head=2, d_model=32, max_seq_len=81, causal=False, positions="learned")
    out = {}
    for name, lat in (("mdm", 0), ("vmd", 4)):
        torch.manual_seed(0)
        m = VMD(VMDConfig(denoiser=dataclasses.replace(base), latent_dim=lat, enc_layers=1, features="sudoku"))
        save_pretrained(root / name, m, CharTokenizer(S.DIGITS), meta={"family": "vmd"})
        out[name] = str(root / name)
    return out


@pytest.mark.parametrize("puzzle,fragment", [
    ("123", "81 cells"),
    ("x" + "." * 80, "illegal character"),
    ("11" + "." * 79, "contradictory givens"),
    ("12345678." + "." * 8 + "9" + "." * 63, "no solution"),
])
def test_sudoku_solve_bad_puzzles(puzzle, fragment, sudoku_ckpts, capsys):
    assert main(["sudoku", "solve", puzzle, "--model", sudoku_ckpts["vmd"]]) == 2
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1


def test_sudoku_solve_reads_stdin_and_needs_a_puzzle(sudoku_ckpts, capsys, monkeypatch):
    import io
    _, sol = S.generate(7)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["sudoku", "solve", "--model", sudoku_ckpts["mdm"]]) == 2
    assert "needs a puzzle" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO(sol + "\n"))
    assert main(["sudoku", "solve", "--model", sudoku_ckpts["mdm"]]) == 0
    assert "valid solution" in capsys.readouterr().out
    assert main(["sudoku", "solve", sol, "--nfe", "-1", "--model", sudoku_ckpts["mdm"]]) == 2
    assert ">= 0" in capsys.readouterr().err


def test_sudoku_solve_never_presents_an_invalid_grid(sudoku_ckpts, capsys):
    puzzle, _ = S.generate(7)
    rc = main(["sudoku", "solve", puzzle, "--model", sudoku_ckpts["vmd"], "--tries", "2", "--json"])
    res = json.loads(capsys.readouterr().out)
    assert rc == (0 if res["valid"] else 1)
    if res["valid"]:
        assert S.is_solution(res["grid"], puzzle)
    else:
        assert res["grid"] is None


def test_sudoku_solve_complete_grid_and_wrong_model(sudoku_ckpts, capsys):
    _, sol = S.generate(7)
    assert main(["sudoku", "solve", sol, "--model", sudoku_ckpts["mdm"]]) == 0
    assert "valid solution" in capsys.readouterr().out
    assert main(["sudoku", "solve", sol, "--model", "builtin:shakespeare-char"]) == 2
    assert "not a Sudoku model" in capsys.readouterr().err


def test_sudoku_generate_csv(tmp_path, capsys):
    out = tmp_path / "p.csv"
    assert main(["sudoku", "generate", "--n", "2", "--generator", "B", "-o", str(out)]) == 0
    pairs = S.read_csv(out)
    assert len(pairs) == 2 and all(S.is_solution(s, p) for p, s in pairs)
    assert out.read_text().splitlines()[0] == "puzzle,solution,blanks,singles,guesses"
    before = out.read_text()
    assert main(["sudoku", "generate", "--n", "1", "-o", str(out)]) == 2     # no overwrite without --force
    assert out.read_text() == before and "exists" in capsys.readouterr().err
    assert main(["sudoku", "frobnicate"]) == 2


def test_bench_vmd_sudoku_rows(sudoku_ckpts, tmp_path, capsys):
    csv = tmp_path / "p.csv"
    assert main(["sudoku", "generate", "--n", "3", "-o", str(csv)]) == 0
    out = tmp_path / "s.json"
    argv = ["bench", "vmd-sudoku", f"mdm={sudoku_ckpts['mdm']}", f"vmd={sudoku_ckpts['vmd']}", f"puzzles={csv}",
            "nfes=5,10", "policies=top_prob,margin", "--json", str(out)]
    assert main(argv) == 0
    res = json.loads(out.read_text())
    assert [(r["model"], r["policy"], r["nfe"]) for r in res["rows"]] == [
        (m, p, n) for m in ("MDM", "VMD") for p in ("top_prob", "margin") for n in (5, 10)]
    assert all(0 <= r["acc"] <= 1 and 0 <= r["violations"] <= 1 and r["acc"] + r["violations"] <= 1 for r in res["rows"])
    assert res["puzzles"] == 3


def test_bench_vmd_sudoku_passes_the_temperature_down(sudoku_ckpts, tmp_path, monkeypatch, capsys):
    """temperature=1 reaches the sampler (each committed cell a draw); 0 stays greedy; < 0 is refused."""
    import adaptive_lm.vmd.sudoku as VS
    seen = []
    real = VS.sample
    monkeypatch.setattr(VS, "sample", lambda *a, **k: seen.append(k["temperature"]) or real(*a, **k))
    csv = tmp_path / "p.csv"
    assert main(["sudoku", "generate", "--n", "2", "-o", str(csv)]) == 0
    argv = ["bench", "vmd-sudoku", f"mdm={sudoku_ckpts['mdm']}", f"vmd={sudoku_ckpts['vmd']}", f"puzzles={csv}",
            "nfes=5", "policies=top_prob"]
    assert main(argv + ["temperature=1"]) == 0 and seen == [1.0, 1.0]
    assert main(argv) == 0 and seen[2:] == [0.0, 0.0]
    assert main(argv + ["temperature=-1"]) == 2 and "temperature must be >= 0" in capsys.readouterr().err


def test_bench_vmd_toy_rows(tmp_path, capsys):
    out = tmp_path / "t.json"
    assert main(["bench", "vmd-toy", "datasets=pair,D1", "blocks=2", "steps=2", "samples=50", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    # the 2-token set has no B = 2 setting; D1 at B = 2 runs NFE 4 and 2 for both models
    assert [(r["model"], r["dataset"], r["blocks"], r["nfe"]) for r in rows] == [
        ("MDM", "D1", 2, 4), ("MDM", "D1", 2, 2), ("VMD", "D1", 2, 4), ("VMD", "D1", 2, 2)]
    assert all(0 <= r["acc"] <= 1 and r["kl"] >= 0 for r in rows)
    assert main(["bench", "vmd-toy", "datasets=D7"]) == 2


def test_bench_vmd_text_rows(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT * 3)
    out = tmp_path / "x.json"
    argv = ["bench", "vmd-text", f"corpus={corpus}", "seq_len=16", "blocks=0,4", "steps=2", "batch_size=4",
            "test_windows=4", "mc_samples=1", "--json", str(out)]
    assert main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["model"] for r in rows] == ["AR", "MDM", "VMD", "block MDM", "block VMD"]
    assert all(r["bpc"] > 0 for r in rows)
    assert main(argv[:-2] + ["blocks=5"]) == 2                       # 5 does not divide 16


def test_train_tiny_vmd_recipe(tmp_path, capsys):
    assert main(["train", "tiny-vmd-test", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("val_acc" in r for r in lines) and any("kl" in r for r in lines)


def test_train_vmd_sudoku_warm_starts_from_an_mdm(sudoku_ckpts, tmp_path, capsys):
    """data.init_from: the run starts from the MDM's denoiser (recorded in meta); a source of
    another layout or family is refused in one line, exit 2, and no run folder is left."""
    out = tmp_path / "run"
    args = ["train", "vmd-sudoku", "model.n_layer=1", "model.n_head=2", "model.d_model=32", "data.latent_dim=4",
            "data.enc_layers=1", "data.pool=8", "data.eval_puzzles=2", "train.steps=2", "train.batch_size=4",
            "train.eval_every=2", "train.save_every=2", "--quiet"]
    assert main(args + [f"data.init_from={sudoku_ckpts['mdm']}", "--out", str(out)]) == 0
    meta = json.loads((out / "checkpoint" / "config.json").read_text())["meta"]
    assert meta["init_from"] == sudoku_ckpts["mdm"]
    capsys.readouterr()
    bad = tmp_path / "bad"
    assert main(args + ["model.d_model=64", f"data.init_from={sudoku_ckpts['mdm']}", "--out", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "warm start" in err and not bad.exists()


def test_sudoku_solve_takes_its_options_before_the_puzzle(sudoku_ckpts, capsys):
    puzzle, _ = S.generate(7)
    assert main(["sudoku", "solve", "--model", sudoku_ckpts["mdm"], "--json", "--tries", "1", puzzle]) in (0, 1)
    assert json.loads(capsys.readouterr().out)["puzzle"] == puzzle
    with pytest.raises(SystemExit) as e:
        main(["sudoku", "solve", puzzle, "--model", sudoku_ckpts["mdm"], "stray"])
    assert e.value.code == 2 and "unrecognized arguments: stray" in capsys.readouterr().err


def test_solve_from_python_parses_the_puzzle(sudoku_ckpts):
    from adaptive_lm.checkpoint import from_pretrained
    from adaptive_lm.tasks.sudoku import SudokuError
    from adaptive_lm.vmd.sudoku import solve
    m, tok = from_pretrained(sudoku_ckpts["mdm"])
    _, sol = S.generate(7)
    assert solve(m, tok, sol.replace(sol[0], "0", 1)).tries >= 1         # '0' is a blank, as on the CLI
    for bad in ("123", "x" + "." * 80, "11" + "." * 79):
        with pytest.raises(SudokuError):
            solve(m, tok, bad)


def test_train_sudoku_on_hard_puzzles(tmp_path, capsys, monkeypatch):
    """data.level=hard: the training pool and the held-out puzzles are of the hard class (cached apart
    from the easy pool), the level is recorded in meta; an unknown level is one line, exit 2."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    args = ["train", "mdm-sudoku", "model.n_layer=1", "model.n_head=2", "model.d_model=32", "data.pool=3",
            "data.eval_puzzles=2", "train.steps=1", "train.batch_size=2", "train.eval_every=1", "--quiet"]
    assert main(args + ["data.level=hard", "--out", str(tmp_path / "run")]) == 0
    meta = json.loads((tmp_path / "run" / "checkpoint" / "config.json").read_text())["meta"]
    assert meta["level"] == "hard"
    pool = json.loads((tmp_path / "cache" / "adaptive_lm" / "sudoku-train-A-n3-b54-s0-hard.json").read_text())
    assert [tuple(p) for p in pool] == S.puzzles(3, split="train", seed=0, blanks=54, level="hard")
    assert main(args + ["data.level=medium", "--out", str(tmp_path / "bad")]) == 2
    assert "data.level must be one of" in capsys.readouterr().err
