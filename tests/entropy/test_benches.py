"""`bench compress` and `bench eem` on tiny inputs: every row present, round trips verified, the
JSON written; bad options are one-line errors."""
import json

import pytest

from adaptive_lm.cli import main

from ..conftest import TEXT


def test_bench_compress_rows(codec_lm, tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_bytes(TEXT.encode()[:1500] + b"\xff\x00")
    out = tmp_path / "b.json"
    assert main(["bench", "compress", "--input", str(src), f"models={codec_lm[0]}", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    codecs = [r["codec"] for r in res["rows"]]
    assert codecs[:2] == [f"lm {codec_lm[0]} + 3-token contexts", f"lm {codec_lm[0]}"]    # the default mixing, the LM alone
    assert codecs[2].startswith("3-token contexts alone") and {"gzip -9", "bz2 -9", "xz -9e"} <= set(codecs)
    coded = [r for r in res["rows"] if r is not res["rows"][2]]
    assert all(r["roundtrip"] is True and r["bpb"] > 0 and r["compress_kbps"] > 0 for r in coded)
    alone = res["rows"][2]                               # an ideal code length: not coded, no speed
    assert alone["roundtrip"] is None and alone["compress_kbps"] is None and 0 < alone["bpb"] < 8
    assert res["bytes"] == 1502 and f"lm {codec_lm[0]}" in res["ratio_to_xz"]
    assert f"input={src}" in res["command"]


def test_bench_compress_missing_input(tmp_path, capsys):
    assert main(["bench", "compress", "--input", str(tmp_path / "nope")]) == 2
    assert "no such file" in capsys.readouterr().err
    for bad in ("adapt=16", "adapt=3,x", "adapt="):
        assert main(["bench", "compress", bad, "baselines=false"]) == 2
        assert "adapt=" in capsys.readouterr().err


def test_bench_eem_rows(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT * 3)
    out = tmp_path / "e.json"
    argv = ["bench", "eem", f"corpus={corpus}", "bpe_vocab=300", "seq_len=16", "steps=4", "batch_size=4",
            "d_model=32", "eval_windows=4", "formats=fp16,e4m3", "injections=add,prepend", "baseline_layers=4,1", "--json", str(out)]
    assert main(argv) == 0
    res = json.loads(out.read_text())
    names = [(r["model"], r["format"]) for r in res["rows"]]
    assert names[:4] == [("causal-4L", "-"), ("causal-1L", "-"), ("eem-add", "fp16"), ("eem-prepend", "fp16")]
    assert res["rows"][1]["params"] < res["rows"][0]["params"]            # the control is shallower
    for r in res["rows"][2:4]:                                            # the injection rows: CE without the oracle
        assert r["ce_foreign"] > 0 and "ce_foreign" not in res["rows"][0]
    assert len(set(names)) == len(names)                                  # each model and format once
    qat = [n for n, f in names if n.endswith("-qat")]
    assert qat and {(qat[0], "fp16"), (qat[0], "e4m3"), (qat[0][:-4], "e4m3")} <= set(names)
    eem = [r for r in res["rows"] if r["model"].startswith("eem-")]
    best = min(eem, key=lambda r: r["ce_charged"])                       # over every format, QAT included
    assert res["best"] == f"{best['model']} {best['format']}"
    assert res["charged_ce_ratio"] == pytest.approx(best["ce_charged"] / res["rows"][0]["ce"], abs=1e-4)
    assert res["target_met"] == (res["charged_ce_ratio"] <= 0.95)
    for r in res["rows"][2:]:
        assert r["ce_charged"] > r["ce"] and abs(r["params"] - res["rows"][0]["params"]) < 0.01 * r["params"]
    assert main(["bench", "eem", "formats=fp4"]) == 2
    assert main(["bench", "eem", "baseline_layers=4,0"]) == 2
    assert main(["bench", "eem", "baseline_layers=4,4"]) == 2
    assert "each depth once" in capsys.readouterr().err
    one = tmp_path / "one.json"                                          # one held-out window: no other window
    assert main(argv[:-2] + ["eval_windows=1", "injections=concat", "--json", str(one)]) == 0
    assert all("ce_foreign" not in r for r in json.loads(one.read_text())["rows"])


def test_bench_compress_reads_a_named_corpus_split(codec_lm, tmp_path, corpus, capsys):
    out = tmp_path / "b.json"
    argv = ["bench", "compress", f"corpus={corpus}", "split=test", f"models={codec_lm[0]}", "baselines=false",
            "--json", str(out)]
    assert main(argv) == 0
    res = json.loads(out.read_text())
    held_out = corpus.read_text()[int(len(corpus.read_text()) * 0.9):]
    assert res["input"] == f"{corpus}:test" and res["bytes"] == len(held_out.encode())
    assert [r["roundtrip"] for r in res["rows"]] == [True, True, None]    # mixing, the LM alone, the statistics alone
    capsys.readouterr()
    assert main(["bench", "compress", f"corpus={corpus}", "--input", str(corpus)]) == 2
    assert "give input=FILE or corpus=NAME, not both" in capsys.readouterr().err
    before = corpus.read_bytes()
    assert main(["bench", "compress", f"corpus={corpus}", "--json", str(corpus)]) == 2    # never the corpus itself
    assert "would overwrite the input" in capsys.readouterr().err and corpus.read_bytes() == before


def test_ngram_alone_bits_is_the_code_length_of_the_mixer_on_a_uniform_lm(codec_lm):
    """The bench's "statistics alone" row: the same mixer, layout and stream as the compressor,
    with a uniform LM; checked against coding the file for real with a model whose logits are all
    equal (the compressed payload is that code length plus the coder's few words per batch)."""
    import torch
    from adaptive_lm.bench.compress import ngram_alone_bits
    from adaptive_lm.entropy.codec import CodecConfig, compress, decompress, read_header
    _, model, tok = codec_lm
    data = (TEXT * 4).encode()
    cfg = CodecConfig(chunk=32, batch=6, adapt=3)
    bits = ngram_alone_bits(model, tok, data, cfg, None)
    flat = type(model)(model.config)
    flat.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p in flat.parameters():
            p.zero_()                                     # every logit 0: the uniform distribution
    blob = compress(data, flat, tok, model_id="flat", cfg=cfg)
    header, pos = read_header(blob)
    payload_bits = 8 * (len(blob) - pos - 4)
    batches = -(-(-(-header["tokens"] // 32)) // 6)
    assert bits <= payload_bits <= bits + 64 * batches + 8 * 8 and decompress(blob, flat, tok) == data
