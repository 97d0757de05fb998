"""DAEDAL (arXiv 2508.00819) as a policy of the one sampling loop: the EOS-confidence signal,
stage 1 (initial length adjustment), stage 2 (mask insertion), per-row canvases and NFE, all
checked exactly on oracle logits functions (see test_sampler.Oracle)."""
import math

import pytest
import torch

from adaptive_lm.diffusion.daedal import Daedal, eos_confidence
from adaptive_lm.diffusion.sampler import Prediction, denoise, model_logits_fn
from adaptive_lm.errors import UsageError

from .test_sampler import (ANS, EOS, IDS, MASK, Oracle, answer_rule, assert_semi_autoregressive, conf_of,
                           no_mask_logits, prompt_for, tiny_mdm)


def pred_of(argmax, p_eos):
    argmax = torch.tensor(argmax)
    p_eos = torch.tensor(p_eos, dtype=torch.float32)
    return Prediction(x0=argmax.clone(), conf=torch.zeros(len(argmax), dtype=torch.float64), argmax=argmax,
                      p_argmax=torch.ones(len(argmax)), p_eos=p_eos)


def slow_eos_confidence(argmax, p_eos, eos, window):
    """The brief: scan backwards, collect the EOS probability of positions whose argmax is EOS
    until ``window`` are collected, divide by ``window``."""
    got = []
    for j in range(len(argmax) - 1, -1, -1):
        if len(got) == window:
            break
        if argmax[j] == eos:
            got.append(float(p_eos[j]))
    return sum(got) / window


# ---- EOS confidence --------------------------------------------------------------------------

def test_eos_confidence_by_hand():
    E = EOS
    argmax = [5, E, 5, E, E, 7, E]
    p_eos = [0.1, 0.6, 0.2, 0.7, 0.8, 0.05, 0.9]
    p = pred_of(argmax, p_eos)
    assert eos_confidence(p, E, 3) == pytest.approx((0.9 + 0.8 + 0.7) / 3)
    assert eos_confidence(p, E, 1) == pytest.approx(0.9)
    assert eos_confidence(p, E, 10) == pytest.approx((0.6 + 0.7 + 0.8 + 0.9) / 10)   # missing count as 0
    assert eos_confidence(pred_of([5, 6, 7], [0.4, 0.4, 0.4]), E, 4) == 0.0           # no EOS argmax at all
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        n = int(torch.randint(1, 30, (1,), generator=g))
        am = torch.where(torch.rand(n, generator=g) < 0.5, E, 5).tolist()
        pe = torch.rand(n, generator=g).tolist()
        for w in (1, 2, 5, 8, 32):
            assert eos_confidence(pred_of(am, pe), E, w) == pytest.approx(slow_eos_confidence(am, pe, E, w), abs=1e-6)


# ---- stage 1 ---------------------------------------------------------------------------------

def small_daedal(**kw):
    base = dict(init_length=8, max_length=64, block_length=8, e_factor=4, w_eos=8, tau_eos=0.5)
    base.update(kw)
    return Daedal(**base)


# answer length A -> (final canvas length, stage-1 forward passes). With certain predictions the
# EOS confidence is min(n - A, 8) / 8, so stage 1 stops at the first n = 8 + 4k with n - A >= 4;
# then w_eos // 2 = 4 EOS tokens are appended.
STAGE1 = {3: (12, 1), 4: (12, 1), 5: (16, 2), 10: (20, 3), 13: (24, 4)}


@pytest.mark.parametrize("A", sorted(STAGE1))
def test_stage1_grows_until_eos_confident_then_appends_eos_tail(A):
    final, passes = STAGE1[A]
    masks = final - 4
    assert final - 4 == 8 + 4 * max(0, math.ceil((A + 4 - 8) / 4))     # the rule in the comment above
    oracle = Oracle(answer_rule())
    out = denoise(oracle, [prompt_for(A)], policy=small_daedal(), ids=IDS, trace=True)
    assert out.canvases[0] == [ANS] * A + [EOS] * (final - A)
    assert out.tokens[0] == [ANS] * A                                  # the answer comes out exactly
    stage2 = math.ceil(masks / 8)                                       # every mask is certain: a block per step
    assert out.stats[0] == {"nfe": passes + stage2, "n_token": final, "e_token": A, "hit_max": False, "expansions": 0,
                            "start_masks": masks, "finished": True}
    tr = out.traces[0]
    grow = [e for e in tr if e.get("stage") == 1]
    assert [e["inserted"] for e in grow] == [list(range(8 + 4 * k, 12 + 4 * k)) for k in range(passes - 1)]
    # the first stage-2 pass sees the grown canvas: masks, then the literal EOS tail
    x, am = oracle.calls[passes]
    canvas = x[0, -final:].tolist()
    assert canvas == [MASK] * masks + [EOS] * 4
    assert_semi_autoregressive([e for e in tr if "stage" not in e], final, 8, start=canvas)


def test_eos_tail_option():
    out = denoise(Oracle(answer_rule()), [prompt_for(3)], policy=small_daedal(eos_tail=0), ids=IDS)
    assert out.canvases[0] == [ANS] * 3 + [EOS] * 5
    out = denoise(Oracle(answer_rule()), [prompt_for(3)], policy=small_daedal(w_eos=6), ids=IDS)   # tail 3
    assert out.canvases[0] == [ANS] * 3 + [EOS] * 8


def test_small_max_length_returns_hit_max_without_error():
    """Answer of 40 tokens, L_max 22: 8, 12, 16, 20, then +2 -> 22 (5 stage-1 passes), no room
    for the EOS tail, 3 stage-2 blocks; the answer is cut at 22."""
    out = denoise(Oracle(answer_rule()), [prompt_for(40)], policy=small_daedal(max_length=22), ids=IDS, trace=True)
    assert out.canvases[0] == [ANS] * 22
    assert out.stats[0] == {"nfe": 5 + 3, "n_token": 22, "e_token": 22, "hit_max": True, "expansions": 0,
                            "start_masks": 22, "finished": True}
    assert [e["inserted"] for e in out.traces[0] if e.get("stage") == 1] == [
        list(range(8, 12)), list(range(12, 16)), list(range(16, 20)), [20, 21]]


def test_eos_tail_is_capped_at_max_length():
    """A = 13 is satisfied at 20 masks; only 2 of the 4 tail EOS fit under L_max = 22."""
    out = denoise(Oracle(answer_rule()), [prompt_for(13)], policy=small_daedal(max_length=22), ids=IDS)
    assert out.canvases[0] == [ANS] * 13 + [EOS] * 9
    assert out.stats[0]["n_token"] == 22 and not out.stats[0]["hit_max"]   # it stopped growing on its own


def test_init_length_equal_to_max_length_never_grows():
    out = denoise(Oracle(answer_rule()), [prompt_for(13)], policy=small_daedal(max_length=8), ids=IDS)
    assert out.canvases[0] == [ANS] * 8 and out.stats[0]["hit_max"] and out.stats[0]["nfe"] == 2


# ---- per-row canvases and NFE in one batch ---------------------------------------------------

def test_each_row_gets_its_own_length_and_finished_rows_stop_counting():
    As = sorted(STAGE1)
    oracle = Oracle(answer_rule())
    out = denoise(oracle, [prompt_for(A) for A in As], policy=small_daedal(), ids=IDS)
    for A, c, s in zip(As, out.canvases, out.stats):
        final, passes = STAGE1[A]
        assert c == [ANS] * A + [EOS] * (final - A)
        assert s["nfe"] == passes + math.ceil((final - 4) / 8)
    assert [s["nfe"] for s in out.stats] == [2, 2, 4, 5, 7]
    # stage 1: 5 rows, then those still growing (3, 2, 1); stage 2: 5 rows, then 3, then 1
    assert oracle.batch_sizes == [5, 3, 2, 1, 5, 3, 1]
    for A, c, s in zip(As, out.canvases, out.stats):                   # the same as one at a time
        single = denoise(Oracle(answer_rule()), [prompt_for(A)], policy=small_daedal(), ids=IDS)
        assert single.canvases[0] == c and single.stats[0] == s


def test_real_model_batched_equals_single_and_respects_max_length():
    fn = no_mask_logits(model_logits_fn(tiny_mdm(spread=True)))
    pol = Daedal(init_length=8, max_length=24, block_length=8, e_factor=8, w_eos=8, tau_high=0.3)
    prompts = [[3, 4, 5], [6, 7]]
    out = denoise(fn, prompts, policy=pol, ids=IDS)
    for i, p in enumerate(prompts):
        c = out.canvases[i]
        assert 8 <= len(c) <= 24 and MASK not in c
        assert out.stats[i]["n_token"] == len(c) and out.stats[i]["hit_max"] == (len(c) == 24)
        single = denoise(fn, [p], policy=pol, ids=IDS)
        assert single.canvases[0] == c and single.stats[0] == out.stats[i]


# ---- stage 2: mask insertion -----------------------------------------------------------------

def weak(logit):
    """A prediction of token 6 with this logit: confidence conf_of(logit)."""
    return 6, logit


def expansion_rule(weak_positions):
    """First stage-2 pass (8 masks): j in weak_positions is unsure (token 6, low confidence),
    j < 5 answers, the rest EOS. Once the canvas has n > 8 positions the answer is 5 + (n - 8)
    tokens long: the inserted masks are where the missing answer goes."""
    def rule(prompt, j, canvas):
        n = len(canvas)
        if n == 8 and all(t == MASK for t in canvas) and j in weak_positions:
            return weak(weak_positions[j])
        return (ANS if j < 5 + (n - 8) else EOS), 30.0
    return rule


def stage2_daedal(**kw):
    base = dict(init_length=8, max_length=64, block_length=8, e_factor=4, w_eos=8, tau_eos=0.0, eos_tail=0,
                tau_high=0.9, tau_low=0.1, tau_expand=0.9)
    base.update(kw)
    return Daedal(**base)


def test_stage2_inserts_e_factor_masks_at_the_low_confidence_mask():
    """One unsure mask (position 3, confidence 0.08 < tau_low), EOS confidence 3/8 < tau_expand:
    position 3 becomes 4 masks (net +3), which the next step fills."""
    assert conf_of(0.5) < 0.1
    out = denoise(Oracle(expansion_rule({3: 0.5})), [[3]], policy=stage2_daedal(), ids=IDS, trace=True)
    tr = out.traces[0]
    assert all("stage" not in e for e in tr)                           # tau_eos = 0: stage 1 never grows
    assert [e["committed"] for e in tr] == [[0, 1, 2, 7, 8, 9, 10], [3, 4, 5, 6]]   # positions after the insertion
    assert [e["inserted"] for e in tr] == [[3, 4, 5, 6], []]
    assert tr[0]["canvas"] == [ANS] * 3 + [MASK] * 4 + [ANS] + [EOS] * 3
    assert out.canvases[0] == [ANS] * 8 + [EOS] * 3
    assert out.tokens[0] == [ANS] * 8
    assert out.stats[0] == {"nfe": 1 + 2, "n_token": 11, "e_token": 8, "hit_max": False, "expansions": 1,
                            "start_masks": 8, "finished": True}


@pytest.mark.parametrize("e_factor,inserted", [(2, [3, 4]), (8, list(range(3, 11)))])
def test_stage2_insertion_size_is_e_factor(e_factor, inserted):
    out = denoise(Oracle(expansion_rule({3: 0.5})), [[3]], policy=stage2_daedal(e_factor=e_factor), ids=IDS, trace=True)
    assert out.traces[0][0]["inserted"] == inserted
    n = 8 + e_factor - 1
    assert out.canvases[0] == [ANS] * (5 + n - 8) + [EOS] * 3


@pytest.mark.parametrize("tau_expand,expands", [(0.9, True), (0.376, True), (0.375, False), (0.2, False)])
def test_no_expansion_once_eos_confidence_reaches_tau_expand(tau_expand, expands):
    """The EOS confidence of the first pass is exactly 3/8 = 0.375."""
    out = denoise(Oracle(expansion_rule({3: 0.5})), [[3]], policy=stage2_daedal(tau_expand=tau_expand), ids=IDS,
                  trace=True)
    tr = out.traces[0]
    if expands:
        assert tr[0]["inserted"] == [3, 4, 5, 6] and len(out.canvases[0]) == 11
    else:
        assert all(e["inserted"] == [] for e in tr)
        # the unsure mask is filled on its own in the next step (the single most confident)
        # (the oracle is sure of it once the canvas is no longer all masks)
        assert [e["committed"] for e in tr] == [[0, 1, 2, 4, 5, 6, 7], [3]]
        assert out.canvases[0] == [ANS] * 5 + [EOS] * 3


def test_no_expansion_when_the_unsure_mask_is_above_tau_low():
    out = denoise(Oracle(expansion_rule({3: 0.5})), [[3]], policy=stage2_daedal(tau_low=0.05), ids=IDS, trace=True)
    assert all(e["inserted"] == [] for e in out.traces[0]) and len(out.canvases[0]) == 8


def test_only_the_least_confident_candidate_expands():
    """Two unsure masks (3: 0.080, 5: 0.060): one expansion per step, at position 5."""
    assert conf_of(0.2) < conf_of(0.5) < 0.1
    out = denoise(Oracle(expansion_rule({3: 0.5, 5: 0.2})), [[3]], policy=stage2_daedal(), ids=IDS, trace=True)
    tr = out.traces[0]
    assert tr[0]["committed"] == [0, 1, 2, 4, 9, 10]
    assert tr[0]["inserted"] == [5, 6, 7, 8]
    assert tr[0]["canvas"] == [ANS, ANS, ANS, MASK, ANS, MASK, MASK, MASK, MASK, EOS, EOS]
    assert out.canvases[0] == [ANS] * 8 + [EOS] * 3


@pytest.mark.parametrize("max_length,inserted,hit_max", [(10, [3, 4, 5], True), (9, [3, 4], True), (8, [], True)])
def test_expansion_is_capped_at_max_length(max_length, inserted, hit_max):
    out = denoise(Oracle(expansion_rule({3: 0.5})), [[3]], policy=stage2_daedal(max_length=max_length), ids=IDS,
                  trace=True)
    assert out.traces[0][0]["inserted"] == inserted
    assert len(out.canvases[0]) == 8 + max(0, len(inserted) - 1) <= max_length
    assert out.stats[0]["hit_max"] == hit_max and MASK not in out.canvases[0]


def test_expansions_are_counted_per_row():
    """Position 3 stays unsure while the canvas is shorter than 14: it expands at 8 and at 11
    positions (two expansions of net +3); a certain row has none."""
    def rule(prompt, j, canvas):
        if j == 3 and canvas[3] == MASK and len(canvas) < 14:
            return weak(0.5)
        return (ANS if j < 5 + (len(canvas) - 8) else EOS), 30.0
    out = denoise(Oracle(rule), [[3]], policy=stage2_daedal(), ids=IDS)
    assert out.stats[0]["expansions"] == 2 and out.canvases[0] == [ANS] * 11 + [EOS] * 3
    out = denoise(Oracle(answer_rule()), [prompt_for(5)], policy=stage2_daedal(), ids=IDS)
    assert out.stats[0]["expansions"] == 0


def test_left_to_right_fill_commits_the_leading_run_above_tau_high():
    """Positions 0-2 certain, 3 unsure (no expansion: tau_low 0), 4-7 certain: the confidence
    order commits 0-2 and 4-7 at once, the left-to-right order stops at the unsure mask."""
    rule = expansion_rule({3: 0.5})
    kw = dict(tau_low=0.0)
    conf = denoise(Oracle(rule), [[3]], policy=stage2_daedal(**kw), ids=IDS, trace=True).traces[0]
    l2r = denoise(Oracle(rule), [[3]], policy=stage2_daedal(order="left_to_right", **kw), ids=IDS, trace=True).traces[0]
    assert [e["committed"] for e in conf] == [[0, 1, 2, 4, 5, 6, 7], [3]]
    assert [e["committed"] for e in l2r] == [[0, 1, 2], [3, 4, 5, 6, 7]]


def test_stage2_expansion_is_per_row():
    """Row 0 has an unsure mask, row 1 (eos_tail=0, certain everywhere) does not."""
    def rule(prompt, j, canvas):
        if 4 in prompt:
            return answer_rule()(prompt, j, canvas)
        return expansion_rule({3: 0.5})(prompt, j, canvas)
    oracle = Oracle(rule)
    out = denoise(oracle, [[3], prompt_for(5)], policy=stage2_daedal(), ids=IDS, trace=True)
    assert out.canvases == [[ANS] * 8 + [EOS] * 3, [ANS] * 5 + [EOS] * 3]
    assert [s["nfe"] for s in out.stats] == [3, 2]
    assert out.traces[1][0]["inserted"] == []
    assert oracle.batch_sizes == [2, 2, 1]


# ---- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [{"tau_high": 1.1}, {"tau_low": -0.1}, {"tau_eos": 2.0}, {"tau_expand": -1.0},
                                {"init_length": 0}, {"e_factor": 0}, {"w_eos": 0}, {"block_length": 0},
                                {"init_length": 65, "max_length": 64}, {"order": "random"}, {"eos_tail": -1}])
def test_bad_daedal_settings_raise_usage_error(kw):
    with pytest.raises(UsageError):
        Daedal(**kw)


def test_daedal_defaults_match_the_paper():
    d = Daedal()
    assert (d.init_length, d.max_length, d.block_length, d.tau_high, d.tau_low, d.tau_eos, d.tau_expand, d.e_factor,
            d.w_eos, d.eos_tail) == (64, 2048, 32, 0.9, 0.1, 0.5, 0.9, 8, 32, 16)


@pytest.mark.parametrize("rule", [{3: 0.5}, {3: 0.5, 5: 0.2}, {1: 0.5, 6: 0.2}])
def test_trace_positions_index_the_traced_canvas(rule):
    """Every traced step: committed positions hold tokens in that step's canvas (never a mask), and
    inserted positions hold masks — also when a commit lies past a same-step insertion."""
    out = denoise(Oracle(expansion_rule(rule)), [[3]], policy=stage2_daedal(), ids=IDS, trace=True)
    tr = out.traces[0]
    assert any(e["inserted"] for e in tr)
    for e in tr:
        assert all(e["canvas"][p] != MASK for p in e["committed"])
        assert all(e["canvas"][p] == MASK for p in e["inserted"])


def test_bench_split_counts():
    from adaptive_lm.bench.daedal import split_counts
    keys = [min(e, 3) for e in (0, 0, 1, 2, 3, 7)]
    assert split_counts(keys, [True, False, True, False, True, True], top=3) == {
        "0": [1, 2], "1": [1, 1], "2": [0, 1], "3+": [2, 2]}
    assert split_counts(["short", "fits", "short"], [False, True, True]) == {"fits": [1, 1], "short": [1, 2]}
