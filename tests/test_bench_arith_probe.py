"""`adaptive-lm bench arith-probe` (adaptive_lm/bench/arith_probe.py): the probe positions, the
reading of a model's predictions against models whose answers are known, and the command."""
import json
from types import SimpleNamespace

import pytest
import torch

from adaptive_lm.bench.arith_probe import PROBES, SHORT, STOP_BY_LENGTH, probe_problem, solution_probes
from adaptive_lm.bench.daedal import task_options
from adaptive_lm.recipes.mdlm import arith_tokenizer
from adaptive_lm.tasks.arith import make_split, spend_problem

from .test_cli import assert_one_line_error, run
from .test_cli_diffusion import mdm  # noqa: F401  (the seconds-long masked diffusion run)

PROB = spend_problem("Ivy", "cards", 7, 3)          # Day 01: -3=04 / Day 02: -3=01 / 01<3, so 2 days. / \boxed{2}


def test_probe_positions_of_a_known_solution():
    s = PROB.solution
    assert s.split("\n")[:3] == ["Day 01: -3=04", "Day 02: -3=01", "01<3, so 2 days."]
    probes = solution_probes(s)
    assert [(name, s[q]) for name, q, _ in probes] == [
        (PROBES[0], "4"), (PROBES[1], "4"), (PROBES[2], "D"),       # line 1's digit; another line follows
        (PROBES[0], "1"), (PROBES[1], "1"), (PROBES[3], "0")]       # line 2's digit; the conclusion follows
    for name, q, cut in probes:                                      # past-only and decisions mask from q on
        assert cut == (-1 if name == PROBES[0] else q)


class OneHot(torch.nn.Module):
    """A stand-in model whose logits put all mass on a fixed token per position, whatever it is shown."""
    def __init__(self, per_position):
        super().__init__()
        self.target = per_position

    def forward(self, x):
        t = self.target(x.shape[1])                                  # (T,) token per position
        return SimpleNamespace(logits=torch.nn.functional.one_hot(t, 100).float()[None].repeat(x.shape[0], 1, 1) * 9)


def test_a_model_that_knows_the_answer_passes_every_probe():
    tok = arith_tokenizer()
    gold = tok.encode(PROB.prompt) + tok.encode(PROB.solution)
    model = OneHot(lambda T: torch.tensor((gold + [tok.eos_id] * T)[:T]))
    right, err = probe_problem(model, tok, PROB.prompt, PROB.solution, tail=4, guess_canvas=64)
    assert err == 0
    assert right == {PROBES[0]: [True, True], PROBES[1]: [True, True], PROBES[2]: [True], PROBES[3]: [True],
                     PROBES[4]: [True]}


def test_a_model_that_always_says_eos_fails_every_probe():
    tok = arith_tokenizer()
    model = OneHot(lambda T: torch.full((T,), tok.eos_id))
    right, err = probe_problem(model, tok, PROB.prompt, PROB.solution, tail=4, guess_canvas=64)
    assert err == -len(PROB.solution)                                 # guesses an empty answer
    assert all(not any(v) for v in right.values()) and sum(map(len, right.values())) == 7


def test_bench_arith_probe_on_a_tiny_model(mdm, tmp_path):  # noqa: F811
    out = tmp_path / "p.json"
    rc, so, se = run("bench", "arith-probe", "--json", str(out), f"model={mdm}", "n=3", "guess_canvas=64")
    assert rc == 0, se
    res = json.loads(out.read_text())
    rows = {r["probe"]: r for r in res["rows"]}
    short, long_ = STOP_BY_LENGTH
    assert list(rows) == [*PROBES, short, long_]
    assert rows[PROBES[0]]["n"] == rows[PROBES[1]]["n"] == rows[PROBES[2]]["n"] + rows[PROBES[3]]["n"]
    assert rows[PROBES[3]]["n"] == 3 and rows[PROBES[4]]["n"] == 3    # one conclusion and one guess per problem
    steps = [p.steps for p in make_split("test", 3, seed=1234, **task_options(str(mdm)))]
    assert rows[short]["n"] == sum(s <= SHORT for s in steps) and rows[long_]["n"] == sum(s > SHORT for s in steps)
    right = sum(round(rows[k]["acc"] * rows[k]["n"]) for k in (short, long_) if rows[k]["n"])
    assert right == round(rows[PROBES[3]]["acc"] * 3)                # the split adds up to the whole
    for r in res["rows"]:
        if r["n"]:
            assert 0 <= r["acc"] <= 1 and r["acc_ci95"][0] <= r["acc"] <= r["acc_ci95"][1]
    assert res["length_guess_mae_chars"] >= abs(res["length_guess_bias_chars"])


def test_bench_arith_probe_refuses_a_causal_model(tmp_path):
    rc, _, se = run("bench", "arith-probe", "model=builtin:calm-pydocs", "n=1")
    assert_one_line_error(rc, se, 2, "causal")
