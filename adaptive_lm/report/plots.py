"""Plots of bench results (matplotlib, Agg, embedded as base64 PNG), and the view of one bench JSON
(``adaptive-lm bench NAME --json OUT``): its command, machine and date, its plots, its rows.

Which plot a bench gets is a table (PLOTS): a line plot of y against x with one line per group, or
bars of y per label. Rows missing a field are left out of that plot; a bench with no entry gets
its table only.
"""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Optional

from .page import esc, table


@dataclass(frozen=True)
class Plot:
    kind: str                     # "line" (y against x, a line per group) or "bar" (y per label)
    x: str                        # line: the x field; bar: the label field(s), "+"-joined
    y: str                        # the y field
    group: str = ""               # line: the fields naming a line, "+"-joined
    title: str = ""
    xlabel: str = ""
    ylabel: str = ""
    logx: bool = False


PLOTS: dict[str, list[Plot]] = {
    "daedal": [Plot("line", "length", "acc", "method", "accuracy vs (initial) length", "L (fixed) / L_init (DAEDAL)", "accuracy"),
               Plot("line", "length", "nfe", "method", "forward passes vs length", "L / L_init", "NFE per problem")],
    "calm": [Plot("line", "consistency", "speedup_b1", "model+measure", "speedup vs consistency (batch 1)",
                  "consistency with the full model", "speedup over full depth")],
    "compress": [Plot("bar", "codec", "bpb", "", "bits per byte per codec", "", "bits / byte")],
    "eem": [Plot("bar", "model+format", "bpb_charged", "", "bits per byte (estimator charged)", "", "bits / byte")],
    "entropy-aware": [Plot("bar", "objective", "test_ce", "", "held-out cross-entropy per objective", "", "nats / token")],
    "vmd-toy": [Plot("line", "nfe", "acc", "model+dataset+blocks", "joint accuracy vs NFE", "NFE", "accuracy", logx=True)],
    "vmd-sudoku": [Plot("line", "nfe", "acc", "model+policy", "Sudoku accuracy vs NFE", "NFE", "grid accuracy", logx=True)],
    "vmd-text": [Plot("bar", "model+blocks", "bpc", "", "bits per character (AR exact, diffusion upper bounds)", "", "bits / char")],
}


def _label(row: dict, fields: str) -> str:
    return " ".join(str(row.get(f, "")) for f in fields.split("+") if f).strip()


def _number(v) -> Optional[float]:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    _pyplot().close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def img(png: str, alt: str) -> str:
    return f"<img class='plot' alt='{esc(alt)}' src='data:image/png;base64,{png}'>"


def series_png(series: dict[str, list[float]], *, title: str, xlabel: str, ylabel: str) -> str:
    """Lines of y against their index (e.g. canvas length per denoising step), one per key."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 2.8), dpi=100)
    for name, ys in series.items():
        ax.plot(range(1, len(ys) + 1), ys, label=name, drawstyle="steps-post")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.title.set_fontsize(10)
    ax.grid(alpha=.3)
    ax.legend(fontsize=7)
    return _png(fig)


def figure_png(spec: Plot, rows: list[dict]) -> Optional[str]:
    """The plot as a base64 PNG, or None when no row has the fields."""
    plt = _pyplot()
    pts = [(r, _number(r.get(spec.y))) for r in rows]
    pts = [(r, y) for r, y in pts if y is not None and (spec.kind == "bar" or _number(r.get(spec.x)) is not None)]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    if spec.kind == "bar":
        labels = [_label(r, spec.x) for r, _ in pts]
        ax.barh(range(len(pts)), [y for _, y in pts], color="#4a7ab5")
        ax.set_yticks(range(len(pts)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(spec.ylabel)
        for i, (_, y) in enumerate(pts):
            ax.text(y, i, f" {y:.3g}", va="center", fontsize=8)
    else:
        groups: dict[str, list] = {}
        for r, y in pts:
            groups.setdefault(_label(r, spec.group), []).append((_number(r[spec.x]), y))
        for name, xy in groups.items():
            xy.sort()
            ax.plot([a for a, _ in xy], [b for _, b in xy], marker="o", label=name or spec.y)
        if spec.logx:
            ax.set_xscale("log", base=2)
        ax.set_xlabel(spec.xlabel or spec.x)
        ax.set_ylabel(spec.ylabel or spec.y)
        ax.grid(alpha=.3)
        if len(groups) > 1:
            ax.legend(fontsize=7, loc="best")
    ax.set_title(spec.title, fontsize=10)
    return _png(fig)


def bench_view(result: dict, *, source: str = "") -> str:
    """One bench JSON: where it came from, its plots, its rows, the scalar results beside them."""
    env = result.get("environment", {})
    where = f"{env.get('cpu', '?')}, {env.get('threads', '?')} threads, torch {env.get('torch', '?')}, {env.get('date', '?')}"
    parts = [f"<p class='mono'>$ {esc(result.get('command', '?'))}</p><p class='muted'>{esc(where)}"
             + (f" · from {esc(source)}" if source else "") + "</p>"]
    rows = result.get("rows", [])
    for spec in PLOTS.get(str(result.get("bench", "")), []):
        png = figure_png(spec, rows)
        if png:
            parts.append(img(png, spec.title))
    parts.append(table(rows))
    extra = {k: v for k, v in result.items()
             if k not in ("bench", "command", "options", "environment", "rows") and not isinstance(v, list)}
    if extra:
        parts.append("<details><summary>other results</summary><pre class='mono'>"
                     + esc("\n".join(f"{k}: {v}" for k, v in extra.items())) + "</pre></details>")
    return "".join(parts)
