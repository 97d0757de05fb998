"""Self-contained HTML views (no network, no scripts needed): the per-token entropy heatmap.
(Issue 7 grows this into the demo report; every view is a function returning an HTML string.)"""
from __future__ import annotations

import html
import math
from typing import Optional

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title><style>
body{{font-family:system-ui,sans-serif;margin:2em;max-width:70em}}
.text{{font-family:ui-monospace,monospace;white-space:pre-wrap;line-height:1.9;border:1px solid #ddd;padding:1em}}
.t{{border-radius:3px}} .legend span{{display:inline-block;width:3em;text-align:center;font-size:80%}}
</style></head><body><h1>{title}</h1>{body}</body></html>"""


def _color(bits: Optional[float], top: float) -> str:
    """White (0 bits) to red (``top`` bits and above); grey where there is no estimate."""
    if bits is None or math.isnan(bits):
        return "#e8e8e8"
    f = max(0.0, min(1.0, bits / top))
    g = int(255 - 200 * f)
    return f"rgb(255,{g},{g})"


def entropy_heatmap(pieces: list[str], bits: list[Optional[float]], *, title: str, summary: dict) -> str:
    """Each token's text on a background coloured by its entropy estimate (bits); hover for the value."""
    vals = sorted(b for b in bits if b is not None)
    top = max(vals[int(0.95 * (len(vals) - 1))] if vals else 1.0, 1e-6)
    spans = []
    for p, b in zip(pieces, bits):
        tip = "no estimate" if b is None else f"{b:.2f} bits"
        spans.append(f'<span class="t" style="background:{_color(b, top)}" title="{tip}">{html.escape(p)}</span>')
    legend = "".join(f'<span style="background:{_color(top * i / 4, top)}">{top * i / 4:.1f}</span>' for i in range(5))
    facts = ", ".join(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}" for k, v in summary.items())
    body = (f"<p>{html.escape(facts)}</p><p class='legend'>bits per token: {legend}</p>"
            f"<div class='text'>{''.join(spans)}</div>")
    return PAGE.format(title=html.escape(title), body=body)
