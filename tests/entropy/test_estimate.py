"""Per-token entropy estimates (entropy/estimate.py) and `adaptive-lm entropy`: the chain-rule
difference computed the slow obvious way, left padding that changes nothing, the CLI outputs."""
import html
import json
import re

import pytest
import torch

from adaptive_lm.cli import main
from adaptive_lm.entropy.eem import EEM, EEMConfig, eem_objective, left_pad_mask
from adaptive_lm.entropy.estimate import token_entropies, window_nats
from adaptive_lm.model import ModelConfig


def _eem(seed=0, n=12, injection="add"):
    torch.manual_seed(seed)
    c = ModelConfig(vocab_size=30, n_layer=1, n_head=2, d_model=32, max_seq_len=n + 1)
    return EEM(EEMConfig(encoder=c, decoder=c, compression=4, injection=injection)).eval()


@pytest.mark.parametrize("injection", ["prepend", "concat", "add"])
def test_left_padding_changes_nothing(injection):
    m = _eem(injection=injection)
    w = torch.randint(1, 30, (1, 7))
    alone = window_nats(m, w, torch.ones_like(w))
    padded = torch.cat([torch.zeros(1, 5, dtype=torch.long), w], 1)
    mask = torch.cat([torch.zeros(1, 5, dtype=torch.long), torch.ones_like(w)], 1)
    torch.testing.assert_close(window_nats(m, padded, mask), alone)


def test_window_nats_is_the_summed_cross_entropy():
    m = _eem()
    w = torch.randint(1, 30, (2, 9))
    logp = m(w).log_softmax(-1)
    ref = -logp.gather(-1, w[:, 1:, None]).squeeze(-1).sum(1)
    torch.testing.assert_close(window_nats(m, w, torch.ones_like(w)), ref)


def test_single_and_two_model_estimates_are_the_chain_rule_differences():
    m, short = _eem(0), _eem(1, n=11)
    ids = torch.randint(1, 30, (20,)).tolist()
    N = 6
    single = token_entropies(m, ids, window=N, batch_size=5)
    two = token_entropies(m, ids, window=N, short_model=short, batch_size=7)
    assert single[0] is None and two[0] is None
    for k in (1, 3, 5, 12, 19):                       # short windows near the start, full ones later
        a = ids[max(0, k - N + 1):k + 1]
        s_long = window_nats(m, torch.tensor([a]), torch.ones(1, len(a), dtype=torch.long)).item()
        s_m = window_nats(m, torch.tensor([a[:-1]]), torch.ones(1, len(a) - 1, dtype=torch.long)).item()
        s_s = window_nats(short, torch.tensor([a[:-1]]), torch.ones(1, len(a) - 1, dtype=torch.long)).item()
        assert single[k] == pytest.approx(s_long - s_m, abs=1e-4)
        assert two[k] == pytest.approx(s_long - s_s, abs=1e-4)


def test_left_pad_training_masks_the_padding():
    mask = left_pad_mask(500, 8, generator=torch.Generator().manual_seed(0))
    assert mask[:, -2:].all() and set(mask.sum(1).tolist()) == set(range(2, 9))
    assert (mask[:, 1:] >= mask[:, :-1]).all()                        # left padding only
    m = _eem().train()
    x = torch.randint(1, 30, (4, 10))
    y = torch.roll(x, -1, 1)
    loss, _ = eem_objective(m, (x, y), left_pad=True, generator=torch.Generator().manual_seed(0))
    pads = (left_pad_mask(4, 11, generator=torch.Generator().manual_seed(0)) == 0).sum(1).tolist()
    total, count = 0.0, 0                                  # the same loss, each row's window cut to its length
    for r, p in enumerate(pads):
        w = torch.cat([x[r, :1], y[r]])[p:][None]
        logp = m(w).log_softmax(-1)[0]
        total -= logp.gather(-1, w[0, 1:, None]).sum().item()
        count += w.shape[1] - 1
    assert loss.item() == pytest.approx(total / count, rel=1e-5)


def test_entropy_cli(tmp_path, corpus, capsys):
    run = tmp_path / "run"
    assert main(["train", "tiny-eem-test", "--out", str(run), "--quiet", "data.left_pad=true", "train.steps=4",
                 f"data.corpus={corpus}"]) == 0
    src = tmp_path / "t.txt"
    src.write_text("First Citizen:\nBefore we proceed any further, hear me speak.")
    ck = str(run / "checkpoint")
    assert main(["entropy", str(src), "--model", ck, "--quiet"]) == 0
    res = json.loads((tmp_path / "t.txt.entropy.json").read_text())
    toks = res["tokens"]
    assert len(toks) == len(src.read_text()) and toks[0]["bits"] is None
    assert b"".join(bytes.fromhex(t["bytes"]) for t in toks) == src.read_bytes()   # byte-exact, in order
    assert all(isinstance(t["bits"], float) for t in toks[1:]) and res["window"] == 33
    page = (tmp_path / "t.txt.entropy.html").read_text()
    spans = re.findall(r'<span class="tok" style="[^"]*" title="([^"]*)">(.*?)</span>', page, re.S)
    assert "".join(html.unescape(t) for _, t in spans) == src.read_text()        # every token, in order
    assert spans[0][0] == "no estimate" and spans[1][0].endswith(" bits")
    assert main(["entropy", str(src), "--model", ck, "--quiet"]) == 2                  # outputs exist
    assert "--force" in capsys.readouterr().err
    assert main(["entropy", str(src), "--model", "builtin:shakespeare-char", "--quiet", "--force"]) == 2
    assert "not an EEM" in capsys.readouterr().err
    plain, mixer = tmp_path / "plain", tmp_path / "mixer"
    assert main(["train", "tiny-eem-test", "--out", str(plain), "--quiet", "train.steps=1", f"data.corpus={corpus}"]) == 0
    assert main(["train", "tiny-eem-test", "--out", str(mixer), "--quiet", "train.steps=1", f"data.corpus={corpus}",
                 "model.mixer=masked_conv"]) == 0
    for ck, msg in [(plain, "left padding"), (mixer, "masked-mixer")]:
        assert main(["entropy", str(src), "--model", str(ck / "checkpoint"), "--quiet", "--force"]) == 2
        assert msg in capsys.readouterr().err
    assert main(["entropy", str(src), "--model", str(plain / "checkpoint"), "--short-model", str(mixer / "checkpoint"),
                 "--quiet", "--force"]) == 2                                    # a mixer short model: refused too


def test_bench_entropy_aware(tmp_path, corpus):
    run = tmp_path / "run"
    assert main(["train", "tiny-eem-test", "--out", str(run), "--quiet", "data.left_pad=true", "train.steps=3",
                 f"data.corpus={corpus}"]) == 0
    out = tmp_path / "ea.json"
    assert main(["bench", "entropy-aware", f"eem={run / 'checkpoint'}", f"corpus={corpus}", "train_tokens=400",
                 "steps=3", "seq_len=16", "batch_size=4", "d_model=32", "eval_windows=4", "drop_above=1.0", "split=train",
                 "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [r["objective"] for r in res["rows"]] == ["ce", "abs", "drop"]
    for r in res["rows"]:
        assert r["gap"] == pytest.approx(r["test_ce"] - r["train_ce"]) and r["train_entropy_est"] > 0
    assert len({round(r["train_ce"], 6) for r in res["rows"]}) == 3          # the objectives train differently
    assert main(["bench", "entropy-aware", "objectives=mse"]) == 2
