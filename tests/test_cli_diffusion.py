"""The diffusion commands end to end on a seconds-long masked diffusion run."""
import json

import pytest

from .test_cli import assert_one_line_error, run


@pytest.fixture(scope="module")
def mdm(tmp_path_factory):
    out = tmp_path_factory.mktemp("mdm") / "run"
    rc, so, se = run("train", "mdlm-tiny-test", "--out", str(out), "--quiet")
    assert rc == 0, se
    return out / "checkpoint"


PROMPT = "Mia has 20 coins and spends 6 each day until fewer than 6 are left. How many days?"


@pytest.mark.parametrize("method", ["daedal", "fixed", "threshold"])
def test_generate_each_method_prints_an_answer_and_stats(mdm, method):
    rc, so, se = run("generate", str(mdm), "--method", method, "--length", "32", "--max-length", "64",
                     "--prompt", PROMPT)
    assert rc == 0, se
    stats = json.loads(se.strip().splitlines()[-1])
    assert stats["nfe"] >= 1 and stats["n_token"] >= 32 and 0 <= stats["e_token"] <= stats["n_token"]
    if method == "fixed":
        assert stats["nfe"] == 32 and stats["n_token"] == 32


def test_generate_left_to_right_fixed_with_one_token_per_step_equals_threshold_one(mdm):
    """Two routes to the same left-to-right decoding (see the sampler test of the same name)."""
    outs = [run("generate", str(mdm), "--method", m, "--length", "32", "--order", "left_to_right", "--prompt", PROMPT,
                *extra) for m, extra in (("fixed", ()), ("threshold", ("--threshold", "1.0")))]
    assert all(rc == 0 for rc, _, _ in outs)
    assert outs[0][1] == outs[1][1]


@pytest.mark.parametrize("flag,tail", [((), 16), (("--eos-tail", "8"), 8), (("--eos-tail", "0"), 0)])
def test_generate_daedal_eos_tail(flag, tail):
    """The canvas is stage 1's masks plus the literal EOS tail (default W_eos/2 = 16)."""
    rc, so, se = run("generate", "builtin:mdlm-arith", "--method", "daedal", "--length", "32", "--prompt", PROMPT, *flag)
    assert rc == 0, se
    st = json.loads(se.strip().splitlines()[-1])
    assert st["expansions"] == 0 and st["n_token"] == st["start_masks"] + tail
    assert "\\boxed{" in so


def test_eos_tail_only_with_daedal(mdm):
    rc, _, se = run("generate", str(mdm), "--method", "fixed", "--eos-tail", "3", "--prompt", PROMPT)
    assert_one_line_error(rc, se, 2, "--eos-tail applies to --method daedal")


def test_eval_gives_a_monte_carlo_bound(mdm):
    rc, so, se = run("eval", str(mdm), "--max-windows", "4", "--batch-size", "4")
    assert rc == 0, se
    res = json.loads(so)
    assert res["task"] == "arith" and res["bits_per_char"] > 0


def test_bench_daedal_small(mdm, tmp_path):
    out = tmp_path / "d.json"
    rc, so, se = run("bench", "daedal", "--json", str(out), f"model={mdm}", "n=2", "lengths=32,64",
                     "init_lengths=32", "max_length=64", "threshold_length=32")
    assert rc == 0, se
    res = json.loads(out.read_text())
    methods = [(r["method"], r["length"]) for r in res["rows"]]
    assert methods == [("fixed", 32), ("fixed", 64), ("threshold", 32), ("daedal", 32), ("daedal+threshold", 32),
                       ("daedal-w8", 32)]
    fixed32 = res["rows"][0]
    assert fixed32["nfe"] == 32 and fixed32["n_token"] == 32
    assert all(0 <= r["acc"] <= 1 and 0 <= r["e_ratio"] <= 1 for r in res["rows"])
    for r in res["rows"]:                       # counts, and an interval around the share they give
        assert r["correct"] == round(r["acc"] * 2) and r["acc_ci95"][0] <= r["acc"] <= r["acc_ci95"][1]
    assert res["n_problems"] == 2
    paired = res["paired_vs_best_fixed"]
    assert set(paired) == {"daedal L=32", "daedal+threshold L=32", "daedal-w8 L=32"}
    for name, c in paired.items():             # the four cells cover the problems; each side adds up
        row = next(r for r in res["rows"] if f"{r['method']} L={r['length']}" == name)
        assert sum(c.values()) == 2 and c["both"] + c["only_daedal"] == row["correct"]
        assert c["both"] + c["only_fixed"] == round(res["best_fixed_acc"] * 2)
    for r in res["rows"]:                       # DAEDAL rows split their counts by expansions
        if r["method"].startswith("daedal"):
            assert sum(n for _, n in r["by_expansions"].values()) == 2
            assert sum(c for c, _ in r["by_expansions"].values()) == r["correct"]
            assert set(r["by_fit"]) <= {"fits", "short"} and sum(n for _, n in r["by_fit"].values()) == 2
        else:
            assert "by_expansions" not in r


def test_bench_daedal_as_the_issue_writes_it(mdm, tmp_path):
    """`bench daedal --n N --seed S --json OUT`: bench options work as flags too."""
    out = tmp_path / "d.json"
    rc, _, se = run("bench", "daedal", "--n", "1", "--seed", "0", "--json", str(out), "--model", str(mdm),
                    "--lengths", "32", "--init-lengths=32", "--max-length", "64", "--threshold-length", "32",
                    "--small-w-eos", "0")
    assert rc == 0, se
    res = json.loads(out.read_text())
    assert res["options"]["n"] == 1 and res["options"]["init_lengths"] == "32" and res["n_problems"] == 1
    assert " n=1 " in res["command"] and "init_lengths=32" in res["command"]


def test_bench_daedal_left_to_right_order(mdm, tmp_path):
    out = tmp_path / "d.json"
    rc, _, se = run("bench", "daedal", "--json", str(out), f"model={mdm}", "n=2", "lengths=32", "init_lengths=32",
                    "max_length=64", "threshold_length=32", "small_w_eos=0", "order=left_to_right")
    assert rc == 0, se
    res = json.loads(out.read_text())
    assert res["order"] == "left_to_right" and res["rows"][0]["nfe"] == 32
    rc, _, se = run("bench", "daedal", f"model={mdm}", "n=2", "order=sideways")
    assert_one_line_error(rc, se, 2, "order must be one of")


def test_bench_daedal_eos_tail_option(mdm, tmp_path):
    common = [f"model={mdm}", "n=1", "lengths=32", "init_lengths=32", "max_length=64", "threshold_length=32",
              "small_w_eos=0"]
    rows = {}
    for tail in ("-1", "0"):
        out = tmp_path / f"d{tail}.json"
        rc, _, se = run("bench", "daedal", "--json", str(out), *common, f"eos_tail={tail}")
        assert rc == 0, se
        res = json.loads(out.read_text())
        assert res["eos_tail"] == ("w_eos/2" if tail == "-1" else 0)
        rows[tail] = next(r for r in res["rows"] if r["method"] == "daedal")
    assert rows["0"]["n_token"] <= rows["-1"]["n_token"]
    rc, _, se = run("bench", "daedal", *common, "eos_tail=-2")
    assert_one_line_error(rc, se, 2, "eos_tail must be >= 0")


@pytest.mark.parametrize("args,code,word", [
    (["--method", "ar"], 2, "does not fit"),
    (["--method", "daedal", "--length", "128", "--max-length", "64"], 2, "exceeds"),
    (["--method", "threshold", "--threshold", "1.5"], 2, "threshold"),
    (["--method", "daedal", "--prompt", ""], 2, "needs a prompt"),
    (["--method", "fixed", "--order", "backwards"], 2, "order must be one of"),
])
def test_bad_diffusion_input(mdm, args, code, word):
    full = ["generate", str(mdm), *args] + ([] if "--prompt" in args else ["--prompt", PROMPT])
    rc, _, se = run(*full, stdin="")
    assert_one_line_error(rc, se, code, word)
