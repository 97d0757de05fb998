"""The one diffusion sampling loop and its fixed-length / threshold policies, checked exactly
against hand-written "oracle" logits functions whose predictions we control, and against a tiny
real bidirectional model for batching and reproducibility."""
import math

import pytest
import torch

from adaptive_lm.diffusion.sampler import (FixedLength, SpecialIds, Threshold, denoise, gumbel_argmax,
                                           linear_schedule, model_logits_fn)
from adaptive_lm.errors import UsageError
from adaptive_lm.model import ModelConfig, TransformerLM

V, PAD, EOS, MASK = 20, 0, 1, 19
IDS = SpecialIds(mask=MASK, eos=EOS, pad=PAD, vocab_size=V)
PROMPT_TOKENS = (3, 4)          # oracle prompts use only these; oracle answers never do
ANS = 5                         # the oracle's answer token


def prompt_for(answer_len: int) -> list[int]:
    """A prompt whose number of 4s is the answer length the oracle will produce."""
    return [3] + [4] * answer_len


class Oracle:
    """logits_fn(input_ids, attention_mask) for left-padded canvases.

    For each row it finds the first real token from the attention mask, reads the prompt (the
    leading run of PROMPT_TOKENS) and calls ``rule(prompt, j, canvas)`` for every response
    position j; the rule returns ``(token, logit)`` (that token gets the logit, every other 0) or a
    full (V,) logits vector. Every call's inputs are recorded.
    """

    def __init__(self, rule):
        self.rule = rule
        self.calls = []

    def __call__(self, x, am):
        self.calls.append((x.clone(), am.clone()))
        B, T = x.shape
        out = torch.zeros(B, T, V)
        for i in range(B):
            s = int((am[i] == 1).nonzero()[0])
            assert (am[i, s:] == 1).all() and (am[i, :s] == 0).all() and (x[i, :s] == PAD).all()
            row = x[i, s:].tolist()
            P = 0
            while P < len(row) and row[P] in PROMPT_TOKENS:
                P += 1
            prompt, canvas = row[:P], row[P:]
            for j in range(len(canvas)):
                r = self.rule(prompt, j, canvas)
                if isinstance(r, torch.Tensor):
                    out[i, s + P + j] = r
                else:
                    out[i, s + P + j, r[0]] = r[1]
        return out

    @property
    def batch_sizes(self):
        return [x.shape[0] for x, _ in self.calls]


def answer_rule(logit=30.0):
    """Response position j predicts ANS when j < A (the prompt's number of 4s), EOS otherwise.
    logit 30 gives probability exactly 1.0 in float32."""
    def rule(prompt, j, canvas):
        return (ANS if j < prompt.count(4) else EOS), logit
    return rule


def conf_of(logit):
    """Probability of the token that got ``logit`` (all V-1 others at 0)."""
    return math.exp(logit) / (math.exp(logit) + V - 1)


def no_mask_logits(logits_fn):
    """Wrap a logits_fn so it never predicts [MASK] (see test_model_predicting_mask_id_...)."""
    def fn(x, am):
        lg = logits_fn(x, am).clone()
        lg[..., MASK] = -float("inf")
        return lg
    return fn


def tiny_mdm(seed=0, spread=False):
    """A tiny untrained bidirectional model; ``spread`` re-draws its matrices with std 0.3 so
    that its predictions and confidences vary across positions (at the default init it predicts
    one token everywhere)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=V, n_layer=2, n_head=2, d_model=32, max_seq_len=256, causal=False)
    m = TransformerLM(cfg).eval()
    if spread:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in m.parameters():
                if p.dim() > 1:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return m


def assert_semi_autoregressive(trace, L, block_length, start=None):
    """No token is committed in a block while an earlier block still has masks (the canvas
    starts as ``start``, default L masks)."""
    before = list(start) if start is not None else [MASK] * L
    for entry in trace:
        assert len(entry["canvas"]) == len(before)
        for p in entry["committed"]:
            first = (p // block_length) * block_length
            assert MASK not in before[:first], (p, before)
            assert before[p] == MASK and entry["canvas"][p] != MASK
        changed = [k for k in range(len(before)) if before[k] != entry["canvas"][k]]
        assert changed == sorted(entry["committed"])
        before = entry["canvas"]


# ---- the schedule ----------------------------------------------------------------------------

def llada_num_transfer_tokens(n, steps):
    """LLaDA generate.py get_num_transfer_tokens, for one row."""
    base, rem = n // steps, n % steps
    num = torch.zeros(steps, dtype=torch.long) + base
    num[:rem] += 1
    return num.tolist()


def test_linear_schedule_matches_llada():
    assert linear_schedule(10, 4) == [3, 3, 2, 2]
    assert linear_schedule(8, 8) == [1] * 8
    assert linear_schedule(3, 5) == [1, 1, 1, 0, 0]
    assert linear_schedule(32, 1) == [32]
    for n in range(0, 41):
        for steps in range(1, 13):
            s = linear_schedule(n, steps)
            assert s == llada_num_transfer_tokens(n, steps) and sum(s) == n


# ---- FixedLength -----------------------------------------------------------------------------

@pytest.mark.parametrize("steps", [0, 8])
def test_fixed_length_steps_L_commits_one_token_per_step(steps):
    oracle = Oracle(answer_rule())
    out = denoise(oracle, [prompt_for(2), prompt_for(5)], policy=FixedLength(length=8, block_length=4, steps=steps),
                  ids=IDS, trace=True)
    assert out.canvases == [[ANS] * 2 + [EOS] * 6, [ANS] * 5 + [EOS] * 3]
    assert out.tokens == [[ANS] * 2, [ANS] * 5]
    assert [s["nfe"] for s in out.stats] == [8, 8]
    assert oracle.batch_sizes == [2] * 8
    for tr in out.traces:
        assert len(tr) == 8 and all(len(e["committed"]) == 1 for e in tr)
        assert MASK not in tr[-1]["canvas"]


def test_fixed_length_half_steps_commits_two_per_step():
    out = denoise(Oracle(answer_rule()), [prompt_for(3)], policy=FixedLength(length=8, block_length=4, steps=4),
                  ids=IDS, trace=True)
    assert out.stats[0]["nfe"] == 4
    assert [len(e["committed"]) for e in out.traces[0]] == [2, 2, 2, 2]
    assert out.canvases[0] == [ANS] * 3 + [EOS] * 5 and MASK not in out.canvases[0]


def test_fixed_length_linear_schedule_within_a_block():
    """One block of 10 masks in 4 steps: 3, 3, 2, 2 tokens."""
    out = denoise(Oracle(answer_rule()), [prompt_for(4)], policy=FixedLength(length=10, block_length=10, steps=4),
                  ids=IDS, trace=True)
    assert [len(e["committed"]) for e in out.traces[0]] == [3, 3, 2, 2]
    assert out.stats[0]["nfe"] == 4


def test_semi_autoregressive_exact_order_when_later_positions_are_more_confident():
    """Confidence grows with j: a sampler without blocks would start at the end; ours goes
    block by block, most confident first inside each block."""
    oracle = Oracle(lambda prompt, j, canvas: (ANS, 1.0 + 0.5 * j))
    out = denoise(oracle, [[3]], policy=FixedLength(length=8, block_length=4), ids=IDS, trace=True)
    tr = out.traces[0]
    assert [e["committed"] for e in tr] == [[3], [2], [1], [0], [7], [6], [5], [4]]
    assert [e["ptr"] for e in tr] == [0, 0, 0, 4, 4, 4, 4, 8]
    assert_semi_autoregressive(tr, 8, 4)
    # without blocks (one block of 8) the same oracle commits from the end
    out = denoise(oracle, [[3]], policy=FixedLength(length=8, block_length=8), ids=IDS, trace=True)
    assert [e["committed"] for e in out.traces[0]] == [[7], [6], [5], [4], [3], [2], [1], [0]]


def test_left_to_right_order_commits_the_leftmost_masks():
    """The oracle above prefers later positions; order=left_to_right ignores that."""
    oracle = Oracle(lambda prompt, j, canvas: (ANS, 1.0 + 0.5 * j))
    out = denoise(oracle, [[3]], policy=FixedLength(length=8, block_length=4, order="left_to_right"), ids=IDS, trace=True)
    assert [e["committed"] for e in out.traces[0]] == [[k] for k in range(8)]
    out = denoise(oracle, [[3]], policy=FixedLength(length=8, block_length=8, steps=4, order="left_to_right"),
                  ids=IDS, trace=True)
    assert [e["committed"] for e in out.traces[0]] == [[0, 1], [2, 3], [4, 5], [6, 7]]


def test_left_to_right_threshold_one_is_left_to_right_one_token_per_step():
    """A reference: with τ = 1 nothing is above the threshold, so the leftmost-run rule commits
    exactly the leftmost mask each step — the same decoding as FixedLength's k = 1 leftmost."""
    fn = no_mask_logits(model_logits_fn(tiny_mdm(spread=True)))
    kw = dict(ids=IDS, trace=True)
    a = denoise(fn, [[3, 4, 5], [6, 7]], policy=Threshold(length=12, threshold=1.0, block_length=4, order="left_to_right"), **kw)
    b = denoise(fn, [[3, 4, 5], [6, 7]], policy=FixedLength(length=12, block_length=4, order="left_to_right"), **kw)
    assert a.canvases == b.canvases and a.traces == b.traces
    assert all([e["committed"] for e in tr] == [[k] for k in range(12)] for tr in a.traces)


@pytest.mark.parametrize("policy", [FixedLength, Threshold])
def test_unknown_order_is_refused(policy):
    with pytest.raises(UsageError, match="order must be one of"):
        policy(length=8, order="right_to_left")


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
def test_semi_autoregressive_on_a_real_model(remasking):
    fn = no_mask_logits(model_logits_fn(tiny_mdm(spread=True)))
    out = denoise(fn, [[3, 4, 5], [6, 7]], policy=FixedLength(length=12, block_length=4, steps=6), ids=IDS,
                  trace=True, remasking=remasking, generator=torch.Generator().manual_seed(0))
    for tr, c in zip(out.traces, out.canvases):
        assert len(tr) == 6 and all(len(e["committed"]) == 2 for e in tr)
        assert_semi_autoregressive(tr, 12, 4)
        assert MASK not in c and tr[-1]["canvas"] == c


# ---- Threshold -------------------------------------------------------------------------------

def test_threshold_zero_commits_a_whole_block_per_step():
    out = denoise(Oracle(answer_rule(logit=2.0)), [prompt_for(3), prompt_for(6)],
                  policy=Threshold(length=8, threshold=0.0, block_length=4), ids=IDS, trace=True)
    assert [s["nfe"] for s in out.stats] == [2, 2]
    for tr in out.traces:
        assert [e["committed"] for e in tr] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert out.canvases == [[ANS] * 3 + [EOS] * 5, [ANS] * 6 + [EOS] * 2]


def test_threshold_one_commits_one_token_per_step():
    """Even probability 1.0 is not > 1.0: one (the most confident) token per step."""
    out = denoise(Oracle(answer_rule(logit=30.0)), [prompt_for(3)],
                  policy=Threshold(length=8, threshold=1.0, block_length=4), ids=IDS, trace=True)
    assert out.stats[0]["nfe"] == 8
    assert all(len(e["committed"]) == 1 for e in out.traces[0])
    assert out.canvases[0] == [ANS] * 3 + [EOS] * 5


def test_threshold_exact_commits():
    """Even positions certain, odd positions unsure (more so at lower j), threshold 0.5."""
    def rule(prompt, j, canvas):
        return ANS, (30.0 if j % 2 == 0 else 1.0 + 0.1 * j)
    assert conf_of(1.7) < 0.5
    out = denoise(Oracle(rule), [[3]], policy=Threshold(length=8, threshold=0.5, block_length=4), ids=IDS, trace=True)
    assert [e["committed"] for e in out.traces[0]] == [[0, 2], [3], [1], [4, 6], [7], [5]]
    assert out.stats[0]["nfe"] == 6


def test_rows_that_finish_early_stop_counting_nfe():
    """A certain row finishes in 2 steps, an unsure one needs 8; later passes carry one row."""
    def rule(prompt, j, canvas):
        return ANS, (30.0 if 4 in prompt else 1.0)
    oracle = Oracle(rule)
    out = denoise(oracle, [[3, 4], [3]], policy=Threshold(length=8, threshold=0.5, block_length=4), ids=IDS)
    assert [s["nfe"] for s in out.stats] == [2, 8]
    assert oracle.batch_sizes == [2, 2, 1, 1, 1, 1, 1, 1]
    assert out.canvases == [[ANS] * 8, [ANS] * 8]


# ---- remasking, temperature, reproducibility -------------------------------------------------

def test_random_remasking_reproducible_with_generator():
    def order(seed):
        out = denoise(Oracle(answer_rule()), [prompt_for(16)], policy=FixedLength(length=16, block_length=16), ids=IDS,
                      remasking="random", trace=True, generator=torch.Generator().manual_seed(seed))
        assert out.canvases[0] == [ANS] * 16 and out.stats[0]["nfe"] == 16
        return [p for e in out.traces[0] for p in e["committed"]]
    a, b, c = order(0), order(0), order(1)
    assert sorted(a) == list(range(16))
    assert a == b and a != c
    assert a != list(range(16)) and a != list(range(15, -1, -1))   # not the low-confidence tie order


def flat_rule(prompt, j, canvas):
    """Every token but [MASK] equally likely."""
    lg = torch.zeros(V)
    lg[MASK] = -float("inf")
    return lg


def test_temperature_sampling_reproducible_with_generator():
    def sample(seed):
        out = denoise(Oracle(flat_rule), [[3], [3, 3]], policy=FixedLength(length=16, block_length=8), ids=IDS,
                      temperature=1.0, generator=torch.Generator().manual_seed(seed))
        assert all(MASK not in c for c in out.canvases)
        return out.canvases
    a, b, c = sample(0), sample(0), sample(1)
    assert a == b and a != c
    assert len({t for row in a for t in row}) > 5                  # really sampled, not an argmax


def test_temperature_zero_ignores_generator():
    fn = no_mask_logits(model_logits_fn(tiny_mdm(spread=True)))
    outs = [denoise(fn, [[3, 4, 5]], policy=FixedLength(length=8, block_length=4), ids=IDS,
                    generator=torch.Generator().manual_seed(s)).canvases for s in (0, 1)]
    assert outs[0] == outs[1]


def test_gumbel_argmax_samples_the_softmax():
    p = torch.tensor([0.7, 0.2, 0.1])
    logits = p.log().expand(20000, 3)
    g = torch.Generator().manual_seed(0)
    x = gumbel_argmax(logits, 1.0, g)
    freq = torch.bincount(x, minlength=3).float() / x.numel()
    assert (freq - p).abs().max() < 0.015
    assert torch.equal(gumbel_argmax(logits, 0.0, g), torch.zeros(20000, dtype=torch.long))
    assert torch.equal(gumbel_argmax(logits, 1.0, torch.Generator().manual_seed(5)),
                       gumbel_argmax(logits, 1.0, torch.Generator().manual_seed(5)))


@pytest.mark.parametrize("policy", [FixedLength(length=8, block_length=4), FixedLength(length=12, block_length=4, steps=6),
                                    Threshold(length=8, threshold=0.3, block_length=4)])
def test_batched_equals_one_prompt_at_a_time(policy):
    fn = no_mask_logits(model_logits_fn(tiny_mdm(spread=True)))
    prompts = [[3, 4, 5], [6], [7, 8, 9, 10, 11]]
    batched = denoise(fn, prompts, policy=policy, ids=IDS, trace=True)
    for i, p in enumerate(prompts):
        single = denoise(fn, [p], policy=policy, ids=IDS, trace=True)
        assert single.canvases[0] == batched.canvases[i]
        assert single.tokens[0] == batched.tokens[i]
        assert single.stats[0] == batched.stats[i]
        assert single.traces[0] == batched.traces[i]
    assert len({t for c in batched.canvases for t in c}) > 1              # not one token everywhere


def test_model_logits_fn_returns_logits():
    m = tiny_mdm()
    x = torch.tensor([[3, 4, MASK, MASK]])
    am = torch.ones_like(x)
    assert torch.equal(model_logits_fn(m)(x, am), m(x, attention_mask=am).logits)
    plain = model_logits_fn(lambda x, attention_mask=None: torch.ones(*x.shape, V))
    assert torch.equal(plain(x, am), torch.ones(1, 4, V))


# ---- stats -----------------------------------------------------------------------------------

def test_token_stats_on_oracle():
    out = denoise(Oracle(answer_rule()), [prompt_for(3), prompt_for(0), prompt_for(8)],
                  policy=FixedLength(length=8, block_length=4), ids=IDS)
    assert out.tokens == [[ANS] * 3, [], [ANS] * 8]
    assert [(s["n_token"], s["e_token"], s["hit_max"]) for s in out.stats] == [(8, 3, False), (8, 0, False), (8, 8, False)]
    assert out.traces is None


# ---- classifier-free guidance ----------------------------------------------------------------

def cfg_oracle(calls):
    """Conditional (prompt visible): token 6 slightly above 5; unconditional (prompt masked):
    6 far above 5. Guided logits unc + (s+1)(cond-unc): 5 wins iff s > 0.2."""
    def fn(x, am):
        calls.append((x.clone(), am.clone()))
        B, T = x.shape
        out = torch.zeros(B, T, V)
        for i in range(B):
            s = int((am[i] == 1).nonzero()[0])
            if x[i, s] != MASK:
                out[i, s:, 5], out[i, s:, 6] = 2.0, 2.5
            else:
                out[i, s:, 5], out[i, s:, 6] = 0.0, 3.0
        return out
    return fn


@pytest.mark.parametrize("scale,token", [(0.0, 6), (0.1, 6), (0.3, 5), (1.0, 5)])
def test_classifier_free_guidance(scale, token):
    calls = []
    prompts = [[3, 4, 4], [7]]
    out = denoise(cfg_oracle(calls), prompts, policy=FixedLength(length=4, block_length=4), ids=IDS, cfg_scale=scale)
    assert out.canvases == [[token] * 4, [token] * 4]
    assert [s["nfe"] for s in out.stats] == ([8, 8] if scale > 0 else [4, 4])
    assert len(calls) == 4
    if scale > 0:
        for x, am in calls:
            assert x.shape[0] == 4
            cond, unc = x[:2], x[2:]
            assert torch.equal(am[:2], am[2:])
            for i, p in enumerate(prompts):
                T = x.shape[1]
                start = T - len(p) - 4
                assert cond[i, start:start + len(p)].tolist() == p
                assert (unc[i, start:start + len(p)] == MASK).all()      # prompt masked
                assert torch.equal(unc[i, start + len(p):], cond[i, start + len(p):])  # same canvas
                assert torch.equal(unc[i, :start], cond[i, :start])      # same padding


# ---- bad input -------------------------------------------------------------------------------

def test_bad_input_raises_usage_error():
    fn = Oracle(answer_rule())
    pol = FixedLength(length=4, block_length=4)
    with pytest.raises(UsageError):
        denoise(fn, [], policy=pol, ids=IDS)
    with pytest.raises(UsageError):
        denoise(fn, [[3], []], policy=pol, ids=IDS)
    for bad in (SpecialIds(mask=V, eos=EOS, pad=PAD, vocab_size=V), SpecialIds(mask=MASK, eos=25, pad=PAD, vocab_size=V),
                SpecialIds(mask=MASK, eos=EOS, pad=-1, vocab_size=V), SpecialIds(mask=None, eos=EOS, pad=PAD)):
        with pytest.raises(UsageError):
            denoise(fn, [[3]], policy=pol, ids=bad)
    with pytest.raises(UsageError):
        denoise(fn, [[3]], policy=pol, ids=IDS, remasking="top_k")
    for t in (-0.1, 1.5):
        with pytest.raises(UsageError):
            Threshold(threshold=t)
    Threshold(threshold=0.0), Threshold(threshold=1.0)
    for kw in ({"length": 0}, {"block_length": 0}):
        with pytest.raises(UsageError):
            FixedLength(**kw)
    capped = FixedLength(length=8, block_length=4)
    capped.max_length = 4                                     # initial length above the policy's maximum
    with pytest.raises(UsageError):
        denoise(fn, [[3]], policy=capped, ids=IDS)
    assert fn.calls == []                                     # nothing ran


# ---- regressions: bugs found by these tests, fixed -----------------------------------------

def test_model_predicting_mask_id_still_fills_the_canvas():
    """The [MASK] logit is suppressed: a model whose argmax is [MASK] still makes progress."""
    oracle = Oracle(lambda prompt, j, canvas: (MASK, 30.0) if j == 0 else (ANS, 30.0))
    out = denoise(oracle, [[3]], policy=FixedLength(length=4, block_length=4), ids=IDS, max_steps=50)
    assert MASK not in out.canvases[0]
    assert out.stats[0]["nfe"] <= 4


def test_fixed_length_default_steps_one_token_per_step_with_partial_last_block():
    """steps=0 means one token per step even when L is not a multiple of the block length."""
    out = denoise(Oracle(answer_rule()), [prompt_for(3)], policy=FixedLength(length=10, block_length=4), ids=IDS)
    assert out.stats[0]["nfe"] == 10


@pytest.mark.parametrize("kw", [{"length": 0}, {"block_length": 0}])
def test_threshold_rejects_empty_canvas_or_block(kw):
    """Threshold validates its canvas and block like FixedLength."""
    with pytest.raises(UsageError):
        denoise(Oracle(answer_rule()), [[3]], policy=Threshold(**kw), ids=IDS, max_steps=5)


# ---- review findings, fixed ---------------------------------------------------------------------

def test_hugging_face_style_output_with_logits_is_accepted():
    class Out:
        def __init__(self, logits):
            self.logits = logits
    base = Oracle(answer_rule())
    a = denoise(lambda x, am: Out(base(x, am)), [prompt_for(3)], policy=FixedLength(length=8, block_length=4), ids=IDS)
    b = denoise(Oracle(answer_rule()), [prompt_for(3)], policy=FixedLength(length=8, block_length=4), ids=IDS)
    assert a.canvases == b.canvases


def test_sampling_does_not_depend_on_batch_mates():
    m = tiny_mdm()
    fn = no_mask_logits(model_logits_fn(m))
    pol = lambda: FixedLength(length=8, block_length=4)
    g = lambda: torch.Generator().manual_seed(7)
    both = denoise(fn, [[3, 4], [5, 6, 7]], policy=pol(), ids=IDS, temperature=1.0, generator=g())
    first_with_other = denoise(fn, [[3, 4], [9]], policy=pol(), ids=IDS, temperature=1.0, generator=g())
    assert both.canvases[0] == first_with_other.canvases[0]


def test_random_remasking_is_refused_for_threshold_policies():
    with pytest.raises(UsageError, match="thresholds"):
        denoise(Oracle(answer_rule()), [[3]], policy=Threshold(length=4), ids=IDS, remasking="random")


def test_ids_outside_the_models_vocabulary_and_context_are_refused():
    bad = SpecialIds(mask=IDS.mask + 100, eos=IDS.eos, pad=IDS.pad)          # no vocab_size given
    with pytest.raises(UsageError, match="outside the model"):
        denoise(Oracle(answer_rule()), [[3]], policy=FixedLength(length=4), ids=bad)
    with pytest.raises(UsageError, match="context"):
        denoise(Oracle(answer_rule()), [[3, 4]], policy=FixedLength(length=40), ids=IDS, max_seq_len=16)
    with pytest.raises(UsageError, match="must differ"):
        denoise(Oracle(answer_rule()), [[3]], policy=FixedLength(length=4), ids=SpecialIds(mask=1, eos=1, pad=0))


def test_denoise_refuses_what_is_not_its_input():
    from adaptive_lm.diffusion.sampler import FixedLength, SpecialIds, denoise
    from adaptive_lm.errors import UsageError
    ids = SpecialIds(mask=1, eos=2, pad=0, vocab_size=10)
    fn = lambda x, am: torch.zeros(x.shape[0], x.shape[1], 10)
    for kw, words in ((dict(prompts=[[3]], ids=(1, 2, 0), policy=FixedLength(length=4, block_length=4)), "SpecialIds"),
                      (dict(prompts=[[3]], ids=ids, policy=FixedLength), "an instance"),
                      (dict(prompts=[[3, 12]], ids=ids, policy=FixedLength(length=4, block_length=4)), "not a token id"),
                      (dict(prompts=["ab"], ids=ids, policy=FixedLength(length=4, block_length=4)), "not a list")):
        with pytest.raises(UsageError, match=words):
            denoise(fn, kw["prompts"], policy=kw["policy"], ids=kw["ids"])
