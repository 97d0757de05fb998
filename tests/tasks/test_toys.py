"""The synthetic VMD joints: supports, sampling, accuracy and the smoothed KL(data || model)."""
import math

import pytest
import torch

from adaptive_lm.errors import UsageError
from adaptive_lm.tasks import toys as T

SIZES = {"pair": 10, "pair-skewed": 10, "D1": 10, "D2": 100}
LENGTHS = {"pair": 2, "pair-skewed": 2, "D1": 4, "D2": 4}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_datasets_and_alphabet():
    assert T.DATASETS == ("pair", "pair-skewed", "D1", "D2")
    assert T.ALPHABET == "0123456789"


@pytest.mark.parametrize("name", T.DATASETS)
def test_support_sums_to_one_with_documented_size_and_length(name):
    sup = T.support(name)
    assert len(sup) == SIZES[name]
    assert math.isclose(sum(sup.values()), 1.0, abs_tol=1e-12)
    assert all(p > 0 for p in sup.values())
    assert T.length(name) == LENGTHS[name]
    assert all(len(x) == LENGTHS[name] and all(0 <= d <= 9 for d in x) for x in sup)


def test_support_contents_exactly():
    assert T.support("pair") == {(k, (k + 1) % 10): 0.1 for k in range(10)}
    assert T.support("pair")[(9, 0)] == 0.1
    sk = T.support("pair-skewed")
    assert set(sk) == set(T.support("pair"))
    assert sk[(0, 1)] == pytest.approx(1 / 55) and sk[(9, 0)] == pytest.approx(10 / 55)
    assert [sk[(k, (k + 1) % 10)] for k in range(10)] == pytest.approx([(k + 1) / 55 for k in range(10)])
    d1 = T.support("D1")
    assert (7, 8, 9, 0) in d1 and (0, 1, 2, 3) in d1 and (0, 1, 3, 4) not in d1
    assert all(p == 0.1 for p in d1.values())
    d2 = T.support("D2")
    assert (9, 0, 3, 4) in d2 and (5, 6, 5, 6) in d2 and (0, 1, 2, 4) not in d2 and (0, 2, 3, 4) not in d2
    assert all(p == 0.01 for p in d2.values())
    assert all(x[1] == (x[0] + 1) % 10 and x[3] == (x[2] + 1) % 10 for x in d2)


@pytest.mark.parametrize("name", T.DATASETS)
def test_sample_returns_support_sequences_and_is_seeded(name):
    x = T.sample(name, 500, _gen(0))
    assert x.shape == (500, LENGTHS[name]) and x.dtype == torch.int64
    sup = T.support(name)
    assert all(tuple(r) in sup for r in x.tolist())
    assert torch.equal(x, T.sample(name, 500, _gen(0)))
    assert not torch.equal(x, T.sample(name, 500, _gen(1)))
    assert T.sample(name, 1, _gen(0)).shape == (1, LENGTHS[name])


@pytest.mark.parametrize("name, n, tol", [("pair-skewed", 200_000, 0.005), ("pair", 100_000, 0.006),
                                          ("D2", 200_000, 0.0015)])
def test_sample_frequencies_match_the_probabilities(name, n, tol):
    x = T.sample(name, n, _gen(3))
    sup = T.support(name)
    L = x.shape[1]
    place = 10 ** torch.arange(L - 1, -1, -1)
    freq = torch.bincount(x @ place, minlength=10 ** L).double() / n
    counts = freq[torch.tensor(list(sup)) @ place]
    assert counts.sum().item() == pytest.approx(1.0)
    for (seq, p), f in zip(sup.items(), counts.tolist()):
        assert abs(f - p) < tol, (seq, p, f)
    if name == "pair-skewed":                    # the skew is visible: (9, 0) ten times as frequent as (0, 1)
        assert 8 < counts[9].item() / counts[0].item() < 12


def test_accuracy_exact_cases():
    assert T.accuracy(torch.tensor([[0, 1], [9, 0], [1, 1], [5, 4]]), "pair") == 0.5
    assert T.accuracy(torch.tensor([[0, 1, 2, 3]]), "D1") == 1.0
    assert T.accuracy(torch.tensor([[0, 1, 2, 4], [0, 1, 3, 3]]), "D2") == 0.0
    assert T.accuracy(torch.tensor(list(T.support("D1"))), "D2") == 1.0      # D1's support lies in D2's
    assert T.accuracy(torch.tensor([[0, 1, 5, 6], [0, 1, 2, 4]]), "D2") == 0.5
    assert T.accuracy(torch.zeros(0, 2, dtype=torch.long), "pair") == 0.0


@pytest.mark.parametrize("name", T.DATASETS)
def test_accuracy_of_data_is_one_and_of_uniform_digits_is_support_share(name):
    assert T.accuracy(T.sample(name, 2000, _gen(1)), name) == 1.0
    n, L = 200_000, LENGTHS[name]
    u = torch.randint(0, 10, (n, L), generator=_gen(2))
    expected = SIZES[name] / 10 ** L            # 10/10^L, and 100/10^4 for D2
    sd = math.sqrt(expected * (1 - expected) / n)
    assert abs(T.accuracy(u, name) - expected) < 5 * sd


def test_kl_exact_cases():
    # no samples: q(x) = (0 + 1/K) / 1, so KL = sum p log(p K)
    for name in T.DATASETS:
        K = 10 ** LENGTHS[name]
        sup = T.support(name)
        want = sum(p * math.log(p * K) for p in sup.values())
        assert T.kl_data_model(torch.zeros(0, LENGTHS[name], dtype=torch.long), name) == pytest.approx(want, rel=1e-12)
    assert T.kl_data_model(torch.zeros(0, 4, dtype=torch.long), "D1") == pytest.approx(math.log(1000))
    # each D1 sequence once: q = (1 + 1e-4) / 11 everywhere on the support
    once = torch.tensor(list(T.support("D1")))
    assert T.kl_data_model(once, "D1") == pytest.approx(math.log(0.1 * 11 / (1 + 1e-4)), rel=1e-12)
    # a model that never hits the support pays a finite price
    miss = torch.zeros(1000, 4, dtype=torch.long)
    assert T.kl_data_model(miss, "D1") == pytest.approx(math.log(0.1 * 1001 / 1e-4), rel=1e-12)
    # pair: half the mass on (0,1), the rest never sampled
    x = torch.tensor([[0, 1]] * 9)
    q01, q_else = (9 + 0.01) / 10, 0.01 / 10
    want = 0.1 * math.log(0.1 / q01) + 0.9 * math.log(0.1 / q_else)
    assert T.kl_data_model(x, "pair") == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("name, n", [("pair", 50_000), ("pair-skewed", 50_000), ("D1", 50_000), ("D2", 200_000)])
def test_kl_of_a_large_data_sample_is_near_zero(name, n):
    kl = T.kl_data_model(T.sample(name, n, _gen(4)), name)
    assert 0 <= kl < 0.01                         # q sums to 1, so KL >= 0 (Gibbs)


def test_kl_of_uniform_digits_on_d1_matches_the_smoothed_estimate():
    n = 200_000
    u = torch.randint(0, 10, (n, 4), generator=_gen(5))
    K = 10 ** 4
    q = (n / K + 1 / K) / (n + 1)                # expected count of each sequence is n / K
    expected = math.log(0.1 / q)                  # ~ log(1000) = 6.91
    assert abs(T.kl_data_model(u, "D1") - expected) < 0.25              # ~20 hits per sequence: sd ~0.07
    assert T.kl_data_model(u, "D1") > 6.5


def test_unknown_dataset_raises_usage_error():
    for fn in (T.support, T.length):
        with pytest.raises(UsageError, match="unknown toy dataset 'D3'; choose from pair, pair-skewed, D1, D2"):
            fn("D3")
    x = torch.zeros(3, 2, dtype=torch.long)
    with pytest.raises(UsageError):
        T.sample("d1", 3, _gen(0))
    with pytest.raises(UsageError):
        T.accuracy(x, "pairs")
    with pytest.raises(UsageError):
        T.kl_data_model(x, "")
