"""Self-contained HTML reports (a face of the library, like the CLI): the demo's report, the view
of any bench JSON (`adaptive-lm report BENCH.json ... -o OUT.html`) and the per-token entropy
heatmap of `adaptive-lm entropy`. One page style (page.py), one view per result (views.py,
plots.py); no network is needed to view a report.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import UsageError
from ..bench import is_bench_result
from ..io import read_json
from . import views
from .page import esc, page
from .plots import bench_view

# demo summary key -> (section id, heading, view)
DEMO_SECTIONS = {
    "daedal": ("daedal", "DAEDAL: variable-length denoising vs a fixed canvas", views.daedal_view),
    "vmd": ("vmd", "VMD vs MDM: a Sudoku filled step by step", views.sudoku_view),
    "calm": ("calm", "CALM: each token's exit layer", views.calm_view),
    "calm-arith": ("calm-arith", "CALM on predictable text (calm-arith): each token's exit layer", views.calm_view),
    "compress": ("compress", "LM compression: bits per byte beside gzip and xz", views.compress_view),
    "entropy": ("entropy", "Per-token entropy", views.entropy_view),
}


def entropy_heatmap(pieces: list[str], bits: list[Optional[float]], *, title: str, summary: dict) -> str:
    """The page of `adaptive-lm entropy`: the heatmap of one text and its summary figures."""
    facts = ", ".join(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}" for k, v in summary.items())
    return page(title, [("entropy", "Per-token entropy", f"<p>{esc(facts)}</p>" + views.token_heatmap(pieces, bits))])


class NotABench(UsageError):
    """A readable JSON file that is not the output of `adaptive-lm bench`."""


def load_bench(path) -> dict:
    """A bench JSON written by `adaptive-lm bench NAME --json OUT`; a clear error for anything else."""
    p = Path(path)
    result = read_json(p, UsageError)
    if not is_bench_result(result):
        raise NotABench(f"{p} is not a bench result (expected the JSON of `adaptive-lm bench NAME --json OUT`)")
    return result


def find_benches(folders: list) -> list[tuple[str, dict]]:
    """Bench JSONs in the folders (files that are not bench results are skipped); of files with the
    same name in several folders, the newest run. Ordered by bench name, then file name."""
    best: dict[str, tuple] = {}
    for folder in folders:
        for p in sorted(Path(folder).glob("*.json")) if Path(folder).is_dir() else []:
            try:
                r = load_bench(p)
            except UsageError:
                continue
            key = (str(r.get("environment", {}).get("date", "")), p.stat().st_mtime)
            if p.name not in best or key > best[p.name][0]:
                best[p.name] = (key, str(p), r)
    found = sorted(best.items(), key=lambda kv: (kv[1][2]["bench"], kv[0]))
    return [(src, r) for _, (_, src, r) in found]


def bench_report(benches: list[tuple[str, dict]], *, title: str = "adaptive_lm benchmarks") -> str:
    """One section per bench result: (source path, result)."""
    sections = [(f"bench-{i}", f"bench {r['bench']}", bench_view(r, source=src)) for i, (src, r) in enumerate(benches)]
    return page(title, sections, subtitle=f"{len(benches)} bench result(s)")


def demo_report(summary: dict, benches: list[tuple[str, dict]]) -> str:
    """The demo's page: a section per method the demo ran, then the bench plots found."""
    sections = [("lm", "A causal LM sampling with the KV cache", views.samples_view(summary))]
    for key, (sid, head, view) in DEMO_SECTIONS.items():
        if key in summary:
            sections.append((sid, head, view(summary[key])))
    if benches:
        inner = "".join(f"<h3>bench {esc(r['bench'])}</h3>" + bench_view(r, source=src) for src, r in benches)
    else:
        inner = ("<p class='muted'>No bench JSON found. Run e.g. <span class='mono'>adaptive-lm bench daedal "
                 "--json runs/bench_daedal.json</span> and the demo draws its plots here.</p>")
    sections.append(("benches", "Benchmarks (measured, with the command and machine)", inner))
    return page("adaptive_lm demo", sections,
                subtitle=f"seed {summary.get('seed', 0)} · shipped checkpoints, CPU · no network needed to view")
