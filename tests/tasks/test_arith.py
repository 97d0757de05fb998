"""The synthetic arithmetic task: correct worked solutions, value-dependent lengths, disjoint splits."""
import re

import pytest
import torch

from adaptive_lm.tasks import arith


def _check_solution(p: arith.Problem):
    lines = p.solution.splitlines()
    steps = lines[:-2]
    assert len(steps) == p.steps == int(p.answer)
    prev = int(re.search(r"has (\d+)", p.prompt)[1])
    for k, line in enumerate(steps, 1):
        m = re.fullmatch(r"Day (\d\d): ([+-])(\d)=(\d\d)", line)
        assert m, line
        day, op, d, r = int(m[1]), m[2], int(m[3]), int(m[4])
        assert day == k and r == (prev + d if op == "+" else prev - d)
        prev = r
    assert lines[-1] == f"\\boxed{{{p.answer}}}"


def test_solutions_are_correct_and_step_counts_cover_1_to_16():
    probs = arith.make_split("train", 400, seed=3)
    for p in probs:
        _check_solution(p)
        assert arith.score(p.solution, p)
    assert {p.steps for p in probs} == set(range(1, arith.MAX_STEPS + 1))


def test_answer_length_depends_on_the_values_not_the_prompt_shape():
    a = arith.spend_problem("Mia", "coins", 47, 6)
    b = arith.spend_problem("Mia", "coins", 17, 6)
    assert len(a.prompt) == len(b.prompt) and len(a.solution) > 2 * len(b.solution)
    assert (a.answer, b.answer) == ("7", "2")
    s = arith.save_problem("Leo", "cards", 12, 7, 80)
    assert s.answer == "10" and s.solution.splitlines()[-2] == "82>=80, so 10 days."


def test_splits_are_deterministic_and_disjoint():
    assert arith.make_split("test", 50, seed=1) == arith.make_split("test", 50, seed=1)
    test = {p.prompt for p in arith.make_split("test", 500, seed=1)}
    train = {p.prompt for p in arith.make_split("train", 3000, seed=2)}
    assert not test & train


def test_every_character_is_in_the_alphabet():
    for p in arith.make_split("test", 200, seed=4):
        assert set(p.prompt + p.solution) <= set(arith.ALPHABET)


def test_score_reads_the_last_box():
    p = arith.spend_problem("Sam", "beads", 20, 6)
    assert arith.score("... \\boxed{2} no wait \\boxed{3}", p)
    assert not arith.score("\\boxed{3} then \\boxed{2}", p)
    assert not arith.score("no box", p)
    with pytest.raises(ValueError):
        arith.sample_problem(torch.Generator(), split="valid")


def test_full_style_writes_the_old_value_and_changes_nothing_else():
    d = arith.spend_problem("Mia", "coins", 47, 6)
    f = arith.spend_problem("Mia", "coins", 47, 6, style="full")
    assert f.solution.splitlines()[:2] == ["Day 01: 47-6=41", "Day 02: 41-6=35"]
    assert d.solution.splitlines()[:2] == ["Day 01: -6=41", "Day 02: -6=35"]
    assert (f.prompt, f.answer, f.steps) == (d.prompt, d.answer, d.steps)
    assert arith.save_problem("Leo", "cards", 12, 7, 80, style="full").solution.startswith("Day 01: 12+7=19\n")
    a = arith.make_split("test", 30, seed=5)
    b = arith.make_split("test", 30, seed=5, style="full")
    assert [p.prompt for p in a] == [p.prompt for p in b] and [p.answer for p in a] == [p.answer for p in b]
    with pytest.raises(ValueError, match="line style"):
        arith.spend_problem("Mia", "coins", 47, 6, style="long")


def test_the_arith_corpus_is_worked_problems_with_held_out_valid_and_test(monkeypatch):
    from adaptive_lm import data
    monkeypatch.setitem(arith.CORPUS_PROBLEMS, "train", 300)          # the real train split is 40,000 problems
    assert data.GENERATED["arith"] is arith.corpus_text               # registered by importing the tasks
    texts = {s: data.read_text("arith", s) for s in data.SPLITS}
    assert texts["valid"] == arith.corpus_text("valid")
    blocks = {s: t.strip("\n").split("\n\n") for s, t in texts.items()}
    assert [len(blocks[s]) for s in data.SPLITS] == [300, 500, 500]
    numbers = {s: {tuple(re.findall(r"\d+", b.split("\n")[0])) + ("spends" in b,) for b in blocks[s]}
               for s in data.SPLITS}                                   # each problem's number tuple
    assert not numbers["train"] & numbers["valid"] and not numbers["train"] & numbers["test"]
    assert not numbers["valid"] & numbers["test"]                      # the held-out tuples split in two halves
    assert len(numbers["valid"]) > 100 and len(numbers["test"]) > 100


def test_heldout_half_splits_the_test_tuples_and_keys_name_the_numbers():
    probs = arith.make_split("test", 400, seed=5)
    halves = {arith.heldout_half(p) for p in probs}
    assert halves == {"valid", "test"}
    for p in probs:
        _check_solution(p)
        nums = tuple(int(x) for x in re.findall(r"\d+", p.prompt))
        assert p.key[0] == ("spend" if "spends" in p.prompt else "save")
        assert p.key[1:] == (nums[:2] if p.key[0] == "spend" else nums)
        assert arith.heldout_half(arith.spend_problem("Mia", "x", *p.key[1:]) if p.key[0] == "spend"
                                  else arith.save_problem("Mia", "x", *p.key[1:])) == arith.heldout_half(p)
