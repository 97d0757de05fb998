"""Wilson intervals and paired counts (adaptive_lm/tasks/metrics.py)."""
import math

import pytest

from adaptive_lm.tasks.metrics import paired_counts, wilson_interval


def test_wilson_matches_the_closed_form_and_known_values():
    # 8 of 10 at 95 %: the textbook value is (0.490, 0.943)
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    # the ends stay inside [0, 1] and are not degenerate
    lo0, hi0 = wilson_interval(0, 20)
    assert lo0 == 0.0 and hi0 == pytest.approx(1.96 ** 2 / (20 + 1.96 ** 2), abs=1e-12)
    lo1, hi1 = wilson_interval(20, 20)
    assert hi1 == 1.0 and lo1 == pytest.approx(1 - hi0, abs=1e-12)


def test_wilson_narrows_with_n_and_contains_the_estimate():
    widths = []
    for n in (16, 64, 256):
        lo, hi = wilson_interval(n // 4, n)
        assert lo < 0.25 < hi
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
    assert widths[1] == pytest.approx(widths[0] / 2, rel=0.15)       # ~1/sqrt(n)


@pytest.mark.parametrize("k,n", [(-1, 5), (6, 5), (0, 0)])
def test_wilson_refuses_impossible_counts(k, n):
    with pytest.raises(ValueError):
        wilson_interval(k, n)


def test_paired_counts():
    a = [True, True, False, False, True]
    b = [True, False, True, False, False]
    assert paired_counts(a, b, ("x", "y")) == {"both": 1, "only_x": 2, "only_y": 1, "neither": 1}
    assert paired_counts(a, b) == {"both": 1, "only_a": 2, "only_b": 1, "neither": 1}
    with pytest.raises(ValueError):
        paired_counts(a, b[:3])
