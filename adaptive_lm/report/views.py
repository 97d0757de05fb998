"""Report views: each turns one result (a dict, as the demo and the benches write them) into an
HTML fragment for page.page. Pictures over prose: DAEDAL's canvas and the Sudoku board as
step-by-step timelines, CALM's tokens coloured by exit layer, per-token entropy as a heatmap,
bits per byte as bars.

Input formats (what demo.py records):
- canvas timeline: {"prompt": str, "vocab": {id: text}, "mask": id, "eos": id,
  "frames": [{"c": [ids], "new": [pos], "ins": [pos], "stage": 1|2}]}
- Sudoku timeline: {"givens": 81 chars, "frames": [81-char grid per step, the puzzle first],
  "new": [[cells filled at that step]], "bad": [cells breaking a rule at the end]}
"""
from __future__ import annotations

from typing import Optional

from .page import esc, heat, layer_color, timeline
from .plots import img, series_png


def token_heatmap(pieces: list[str], bits: list[Optional[float]]) -> str:
    """Each token's text on a background coloured by its entropy estimate (bits); hover for the value."""
    vals = sorted(b for b in bits if b is not None)
    top = max(vals[int(0.95 * (len(vals) - 1))] if vals else 1.0, 1e-6)
    spans = "".join(f'<span class="tok" style="background:{heat(b, top)}" title="{"no estimate" if b is None else f"{b:.2f} bits"}">'
                    f"{esc(p)}</span>" for p, b in zip(pieces, bits))
    legend = "".join(f'<span style="background:{heat(top * i / 4, top)}">{top * i / 4:.1f}</span>' for i in range(5))
    return f"<p class='legend'>bits per token: {legend}</p><div class='canvas'>{spans}</div>"


def exit_layer_tokens(prompt: str, pieces: list[str], layers: list[int], n_layer: int) -> str:
    """CALM's output, each token on the colour of the layer it exited at (hover for the layer)."""
    spans = "".join(f'<span class="tok" style="background:{layer_color(d, n_layer)};color:#fff" title="exit layer {d} of {n_layer}">'
                    f"{esc(p)}</span>" for p, d in zip(pieces, layers))
    legend = "".join(f'<span style="background:{layer_color(d, n_layer)};color:#fff">{d}</span>' for d in range(1, n_layer + 1))
    return (f"<p class='legend'>exit layer: {legend}</p>"
            f"<div class='canvas'><span class='k-prompt'>{esc(prompt)}</span>{spans}</div>")


def verdict(ok: bool, yes: str = "correct", no: str = "wrong") -> str:
    return f"<span class='ok'>{yes}</span>" if ok else f"<span class='bad'>{no}</span>"


def daedal_view(res: dict) -> str:
    """DAEDAL's canvas step by step beside the fixed-length baseline's (both timelines)."""
    parts = [f"<p>Problem (fresh, held-out generator): <span class='mono'>{esc(res['prompt'])}</span> "
             f"— expected answer <b>{esc(res['answer'])}</b>.</p>",
             "<p class='muted'>Grey ▮ = mask, green = committed this step, orange = masks DAEDAL just inserted, "
             "· = EOS. Drag the slider or press play.</p><div class='row2'>"]
    for key, label in (("daedal", "DAEDAL (starts from a short canvas)"), ("fixed-256", "fixed length 256 (LLaDA)")):
        r = res.get(key)
        if not r:
            continue
        parts.append(f"<div><h3>{esc(label)}</h3><p>{verdict(r['correct'])} · {r['nfe']} forward passes · "
                     f"final canvas {r['n_token']} ({r['e_token']} non-EOS) · {r['seconds']:.1f} s</p>")
        parts.append(timeline(f"tl-{key}", "canvas", r["timeline"]) + "</div>")
    parts.append("</div>")
    series = {}
    for key in ("daedal", "fixed-256"):
        if res.get(key):
            frames = res[key]["timeline"]["frames"]
            mask = res[key]["timeline"]["mask"]
            series[f"{key}: canvas"] = [len(f["c"]) for f in frames]
            series[f"{key}: masks left"] = [sum(t == mask for t in f["c"]) for f in frames]
    if series:
        parts.append(img(series_png(series, title="canvas length and masks left per step", xlabel="step (forward pass)",
                                    ylabel="positions"), "canvas length per step"))
    return "".join(parts)


def sudoku_view(res: dict) -> str:
    """The board filling step by step, one timeline per model."""
    parts = [f"<p>A fresh puzzle ({res['puzzle'].count('.')} blanks, independent generator B), filled in "
             f"{res.get('nfe', 5)} parallel steps. Bold = given, green = filled at this step, red = breaks a rule.</p>"
             "<div class='row2'>"]
    for label in ("VMD", "MDM"):
        r = res.get(label)
        if not r:
            continue
        state = verdict(r["valid"], "valid solution", f"not a solution ({r['violations']} rule breaks)")
        parts.append(f"<div><h3>{label}</h3><p>{state}</p>{timeline(f'tl-sudoku-{label}', 'sudoku', r['timeline'])}</div>")
    return "".join(parts) + "</div>"


def calm_run(res: dict, run: dict, n: int) -> str:
    same = sum(a == b for a, b in zip(run["tokens"], res["full_tokens"]))
    return (f"<p>{esc(res['measure'])} ≥ λ = {run['threshold']:g} "
            f"(<b>{'certified by calibration' if run.get('certified') else 'NOT certified: the guarantee does not cover it'}</b>): "
            f"average {run['avg_layers']:.2f} of {n} layers per token; {same} / {len(res['full_tokens'])} tokens equal "
            f"to the full-depth model's.</p>" + exit_layer_tokens(res["prompt"], run["pieces"], run["exit_layers"], n))


def calm_view(res: dict) -> str:
    """Tokens coloured by exit layer (the certified threshold, and a looser one for contrast), the
    full-depth text below them."""
    n = res["n_layer"]
    return ("".join(calm_run(res, run, n) for run in res["runs"])
            + f"<h3>Full depth ({n} layers)</h3><div class='canvas'><span class='k-prompt'>{esc(res['prompt'])}</span>"
              f"{esc(res['full'])}</div>")


def bars(values: dict, unit: str) -> str:
    """Horizontal bars, one per key, longest = 100 %."""
    top = max(values.values()) or 1.0
    rows = "".join(f"<tr><td>{esc(k)}</td><td><span class='bar' style='width:{20 * v / top:.2f}em'></span> "
                   f"{v:.3f} {esc(unit)}</td></tr>" for k, v in values.items())
    return f"<table class='data'>{rows}</table>"


def compress_view(res: dict) -> str:
    """Round trip and bits per byte beside the standard codecs."""
    return (f"<p>{res['bytes']} bytes → {res['compressed']} bytes; round trip exact: "
            f"{verdict(res['roundtrip'], 'yes', 'NO')}.</p>" + bars(res["bits_per_byte"], "bits/byte")
            + f"<p class='muted'>Every size includes its format's header and frame ({res.get('header_bytes', '?')} bytes "
              "of the LM's file: model name, fingerprint, lengths, checksums). Whole-file figures are in the bench "
              "plot below when a bench compress JSON exists.</p>")


def entropy_view(res: dict) -> str:
    known = [b for b in res["bits"] if b is not None]
    mean = sum(known) / max(len(known), 1)
    return (f"<p>Per-token entropy estimated by the EEM (single-model chain rule): mean {mean:.2f} bits/token over "
            f"{len(known)} tokens. Hover a token for its value.</p>" + token_heatmap(res["tokens"], res["bits"]))


def samples_view(res: dict) -> str:
    texts = "".join(f"<div class='canvas'><span class='k-prompt'>{esc(res['prompt'])}</span>{esc(s)}</div>"
                    for s in res["samples"])
    return (f"<p>{len(res['samples'])} continuations sampled as one batch with the KV cache: "
            f"{res['tokens_per_s']:,.0f} tokens/s.</p>" + texts)
