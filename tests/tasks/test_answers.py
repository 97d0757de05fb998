"""Math answer extraction, MATH-style normalisation and equivalence (adaptive_lm.tasks.answers)."""
import json

import pytest

from adaptive_lm.data import data_dir
from adaptive_lm.errors import DataError
from adaptive_lm.tasks.answers import check_math, gsm8k_gold, is_equiv, last_boxed, normalize_math


def _bench(name):
    try:
        p = data_dir() / "benchmarks" / name
    except DataError:
        pytest.skip("no data folder (set ADAPTIVE_LM_DATA or keep ../shared/data beside the checkout)")
    if not p.is_file():
        pytest.skip(f"benchmark file {p} is absent")
    return p


@pytest.mark.parametrize("text, boxed", [
    (r"so \boxed{5}.", "5"),
    (r"first \boxed{1}, then \boxed{\frac{1}{\sqrt{2}}}.", r"\frac{1}{\sqrt{2}}"),
    (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)"),
    (r"$\boxed{x^{2^{3}}}$ and text after", "x^{2^{3}}"),
    (r"\boxed{\{1,2\}}", r"\{1,2\}"),          # escaped braces are not counted
    (r"\boxed {3}", "3"),
    (r"$\boxed 42$ is it", "42"),
    (r"\fbox{7}", "7"),
    (r"\boxed{1} and a truncated \boxed{2", None),   # the last box never closes
    ("no box at all", None),
    (r"\boxedx", None),
    ("", None),
    (None, None),
])
def test_last_boxed(text, boxed):
    assert last_boxed(text) == boxed


@pytest.mark.parametrize("raw, norm", [
    (r"\dfrac{1}{2}", r"\frac{1}{2}"),
    (r"\tfrac{3}{4}", r"\frac{3}{4}"),
    (r"\frac12", r"\frac{1}{2}"),
    (r"\frac\pi2", r"\frac{\pi}{2}"),
    (r"\frac{\sqrt3}{2}", r"\frac{\sqrt{3}}{2}"),
    (r"11\sqrt2", r"11\sqrt{2}"),
    (r"\sqrt[3]{2}", r"\sqrt[3]{2}"),
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})"),
    (r"90^\circ", "90"),
    (r"90^{\circ}", "90"),
    (r"\$1,000", "1000"),
    ("1,000,000.5", "1000000.5"),
    (r"2\,000", "2000"),
    ("1, -2", "1,-2"),                # a list keeps its commas
    ("3, 5, 7", "3,5,7"),
    (r"10\text{ inches}", "10"),
    (r"10 \text{cm}^2", "10"),
    ("12 dollars", "12"),
    (r"50\%", "50"),
    (r"\text{Evelyn}", "Evelyn"),
    (r"\text{(C)}", "C"),
    (r"\textbf{(A)}", "A"),
    ("x = 5", "5"),
    ("k=-2", "-2"),
    (".5", "0.5"),
    ("-.5", "-0.5"),
    ("5.", "5"),
    ("3/4", r"\frac{3}{4}"),
    (r"\boxed{12}", "12"),
    (r"$\$5.00$", "5.00"),
    (r"6 - 5i", "6-5i"),
    (r"\infty", r"\infty"),
    (None, ""),
])
def test_normalize_math(raw, norm):
    assert normalize_math(raw) == norm
    assert normalize_math(norm) == norm          # idempotent


@pytest.mark.parametrize("pred, gold, same", [
    ("0.5", r"\frac{1}{2}", True),
    (r"\frac{1}{2}", "1/2", True),
    (r"-\frac14", "-0.25", True),
    (r"\dfrac{1}{2}", r"\frac12", True),
    ("1,000", "1000", True),
    ("2.0000001", "2", True),          # within 1e-6
    ("2.001", "2", False),
    ("10", r"10^\circ", True),
    ("18", r"\$18", True),
    ("C", r"\text{(C)}", True),
    (r"-\frac{\pi}{6}", r"-\dfrac{\pi}{6}", True),
    ("1,-2", "1, -2", True),
    ("1,2", "1,-2", False),
    (r"\frac{1}{0}", "1", False),
    ("Evelyn", r"\text{Evelyn}", True),
    ("evelyn", r"\text{Evelyn}", False),
    (None, "5", False),
    ("", "", False),                   # an empty prediction is never right
])
def test_is_equiv(pred, gold, same):
    assert is_equiv(pred, gold) is same


def test_check_math_uses_the_last_box():
    assert check_math(r"try \boxed{3}, no: \boxed{\dfrac{1}{2}}", "0.5")
    assert not check_math(r"\boxed{0.5} then \boxed{3}", "0.5")
    assert not check_math("the answer is 0.5", "0.5")


def test_gsm8k_gold():
    assert gsm8k_gold("So 2 + 2 = 4.\n#### 4") == "4"
    assert gsm8k_gold("x\n#### 1,000") == "1000"
    assert gsm8k_gold("#### -3 ") == "-3"
    with pytest.raises(DataError, match="####"):
        gsm8k_gold("no marker here")


def test_gsm8k_gold_on_the_real_file():
    rows = [json.loads(line) for line in _bench("gsm8k_test.jsonl").read_text().splitlines()]
    assert [gsm8k_gold(r["answer"]) for r in rows[:3]] == ["18", "3", "70000"]
    assert rows[146]["answer"].endswith("#### 2,125") and gsm8k_gold(rows[146]["answer"]) == "2125"
    for r in rows:                        # every gold is a plain number, its own answer
        float(gsm8k_gold(r["answer"]))
        assert is_equiv(gsm8k_gold(r["answer"]), gsm8k_gold(r["answer"]))


def test_math500_reference_solutions_score_right():
    """The last box of every reference solution equals the file's answer field."""
    rows = [json.loads(line) for line in _bench("math500_test.jsonl").read_text().splitlines()]
    assert len(rows) == 500
    assert all(check_math(r["solution"], r["answer"]) for r in rows)
