"""report/: bench JSON loading and discovery, the bench page, plots, the demo's trace -> frame
conversions, and `adaptive-lm report` (bad input -> one line, nothing overwritten)."""
import html
import json
import os
import re

import pytest
import torch

from adaptive_lm.cli import main
from adaptive_lm.demo import board_timeline, canvas_timeline
from adaptive_lm.diffusion.sampler import SpecialIds
from adaptive_lm.errors import UsageError
from adaptive_lm.report import bench_report, demo_report, find_benches, load_bench
from adaptive_lm.report.page import data_block, page, table
from adaptive_lm.report.plots import PLOTS, figure_png
from adaptive_lm.tasks.sudoku import DIGITS, generate
from adaptive_lm.tokenizer import CharTokenizer


def bench(name, rows, date="2026-11-22T10:00:00+00:00", **extra):
    return {"bench": name, "command": f"adaptive-lm bench {name} --seed 0", "options": {},
            "environment": {"cpu": "test cpu", "threads": 2, "torch": "2.13.0", "date": date}, "rows": rows, **extra}


DAEDAL_ROWS = [{"method": "fixed", "length": 64, "acc": 0.1, "nfe": 64.0},
               {"method": "fixed", "length": 128, "acc": 0.3, "nfe": 128.0},
               {"method": "daedal", "length": 32, "acc": 0.4, "nfe": 50.0}]


def write(path, obj):
    path.write_text(json.dumps(obj))
    return path


def test_load_bench_rejects_what_is_not_a_bench_result(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        load_bench(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UsageError, match="not JSON"):
        load_bench(tmp_path / "bad.json")
    with pytest.raises(UsageError, match="not a bench result"):
        load_bench(write(tmp_path / "other.json", {"rows": []}))
    assert load_bench(write(tmp_path / "ok.json", bench("daedal", DAEDAL_ROWS)))["bench"] == "daedal"


def test_find_benches_keeps_the_newest_of_a_file_name(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    write(a / "bench_daedal.json", bench("daedal", DAEDAL_ROWS[:1], date="2026-11-20T00:00:00"))
    write(b / "bench_daedal.json", bench("daedal", DAEDAL_ROWS, date="2026-11-22T00:00:00"))
    write(a / "bench_daedal_v2.json", bench("daedal", DAEDAL_ROWS[:2]))
    write(a / "calm.json", bench("calm", []))
    write(a / "summary.json", {"samples": []})                      # not a bench: skipped
    found = find_benches([a, b, tmp_path / "absent"])
    assert [(r["bench"], len(r["rows"])) for _, r in found] == [("calm", 0), ("daedal", 3), ("daedal", 2)]
    assert found[1][0] == str(b / "bench_daedal.json")


def test_bench_report_shows_command_machine_plots_and_every_row(tmp_path):
    r = bench("daedal", DAEDAL_ROWS, best_fixed_acc=0.3)
    out = bench_report([("x.json", r)])
    assert "adaptive-lm bench daedal --seed 0" in out and "test cpu" in out and "2026-11-22" in out
    assert out.count("data:image/png;base64,") == len(PLOTS["daedal"])
    assert out.count("<tr>") == 1 + len(DAEDAL_ROWS) and "best_fixed_acc: 0.3" in out
    unknown = bench_report([("y.json", bench("no-such-bench", [{"a": 1}]))])
    assert "data:image/png" not in unknown and "<td>1</td>" in unknown          # table only


def test_figure_png_needs_the_fields():
    spec = PLOTS["daedal"][0]
    assert figure_png(spec, [{"method": "fixed"}]) is None
    png = figure_png(spec, DAEDAL_ROWS)
    assert png and png.startswith("iVBOR")                          # base64 of the PNG signature


def test_page_pieces_escape_their_input():
    block = data_block("d", {"s": "</script><script>alert(1)</script>"})
    assert block.count("</script>") == 1                            # only the block's own end tag
    assert json.loads(re.search(r">(.*)</script>", block).group(1).replace("<\\/", "</"))["s"].startswith("</script>")
    doc = page("a <b>", [("s1", "x & y", "<p>inner</p>")])
    assert "<title>a &lt;b&gt;</title>" in doc and 'id="s1"' in doc and "x &amp; y" in doc
    t = table([{"a": 0.123456, "b": None, "c": True}, {"a": "<x>"}])
    assert "0.1235" in t and "–" in t and "yes" in t and "&lt;x&gt;" in t


def test_canvas_timeline_keeps_the_traces_positions():
    """The sampler's trace indexes each step's own canvas (Daedal.step moves a commit past a
    same-step insertion), so the frames carry its positions unchanged."""
    tok = CharTokenizer.from_text("abc")
    ids = SpecialIds(tok.mask_id, tok.eos_id, tok.pad_id, tok.vocab_size)
    m, a = ids.mask, tok.encode("a")[0]
    trace = [{"canvas": [m] * 4, "committed": [], "inserted": [2, 3], "ptr": 0, "stage": 1},
             # step: a commit at 3, then the mask at 1 replaced by 3 masks (net +2): the commit is at 5
             {"canvas": [m, m, m, m, m, a], "committed": [5], "inserted": [1, 2, 3], "ptr": 0}]
    tl = canvas_timeline(tok, "ab", trace, ids)
    assert [f["stage"] for f in tl["frames"]] == [1, 2]
    assert tl["frames"][1]["new"] == [5] and tl["frames"][1]["c"][5] == a
    assert tl["frames"][0]["new"] == [] and tl["frames"][0]["ins"] == [2, 3]
    assert tl["vocab"][a] == "a" and m not in tl["vocab"] and tl["mask"] == m


def test_board_timeline_marks_new_and_bad_cells():
    tok = CharTokenizer(DIGITS)                                     # the Sudoku checkpoints' tokenizer
    puzzle, solution = generate(3)
    blanks = [i for i, ch in enumerate(puzzle) if ch == "."]
    step1 = list(puzzle)
    for i in blanks[:10]:
        step1[i] = solution[i]
    final = list(solution)
    j = blanks[-1]
    final[j] = "1" if solution[j] != "1" else "2"                    # one wrong digit: it and its clashes are bad
    enc = lambda g: [tok.mask_id if ch == "." else tok.stoi[ch] for ch in g]
    tl = board_timeline(tok, puzzle, [{"canvas": enc(step1)}, {"canvas": enc(final)}])
    assert tl["frames"] == [puzzle, "".join(step1), "".join(final)]
    assert tl["new"][1] == blanks[:10] and tl["new"][2] == blanks[10:]
    assert j in tl["bad"] and all(final[i] == final[j] for i in tl["bad"])


def test_demo_report_has_a_section_per_recorded_method():
    summary = {"seed": 0, "prompt": "R:", "samples": ["x"], "tokens_per_s": 10.0,
               "entropy": {"tokens": ["a", "b"], "bits": [None, 1.5]},
               "compress": {"bytes": 10, "compressed": 8, "roundtrip": True, "bits_per_byte": {"lm": 6.4, "gzip -9": 8.0}}}
    doc = demo_report(summary, [])
    assert 'id="entropy"' in doc and 'id="compress"' in doc and 'id="daedal"' not in doc
    assert "No bench JSON found" in doc and "1.50 bits" in doc


def test_report_cli_writes_and_never_overwrites(tmp_path, capsys):
    src = write(tmp_path / "b.json", bench("calm", [{"model": "m", "measure": "margin", "consistency": 0.9,
                                                    "speedup_b1": 1.5}]))
    assert main(["report", str(src)]) == 0
    out = tmp_path / "b.html"
    assert "speedup vs consistency" in html.unescape(out.read_text())
    before = out.stat().st_mtime_ns
    assert main(["report", str(src)]) == 2 and "--force" in capsys.readouterr().err
    assert out.stat().st_mtime_ns == before
    assert main(["report", str(src), "-o", str(src)]) == 2 and "would overwrite the input" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nope.json"), "-o", str(tmp_path / "n.html")]) == 2
    assert not (tmp_path / "n.html").exists()
    assert main(["report", str(src), "--force"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["b.html", "b.json"]       # no temp file left behind
    other = write(tmp_path / "sweep.json", {"not": "a bench"})       # a glob over a folder with other JSON
    assert main(["report", str(src), str(other), "-o", str(tmp_path / "both.html")]) == 0
    assert "skipped" in capsys.readouterr().err and (tmp_path / "both.html").exists()
    assert main(["report", str(other), "-o", str(tmp_path / "o.html")]) == 2          # alone: an error
    assert main(["report", str(other), str(other), "-o", str(tmp_path / "o.html")]) == 2
    assert main(["report", str(src), str(tmp_path / "nope.json"), "-o", str(tmp_path / "o.html")]) == 2
    assert not (tmp_path / "o.html").exists()
