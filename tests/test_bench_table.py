"""The bench table printer (adaptive_lm/bench/__init__.py: format_table)."""
from adaptive_lm.bench import format_table


def test_table_cells_never_use_exponents_for_large_numbers():
    rows = [{"codec": "ours", "bpb": 1.18412, "compress_kbps": 11790.4, "roundtrip": True},
            {"codec": "gzip", "bpb": 2.5, "compress_kbps": 0.000123}]
    lines = format_table(rows).splitlines()
    assert lines[0].split() == ["codec", "bpb", "compress_kbps", "roundtrip"]
    assert lines[2].split() == ["ours", "1.184", "11790", "True"]
    assert lines[3].split() == ["gzip", "2.5", "0.000123"]          # a missing cell is blank
    assert format_table([]) == "(no rows)"


def test_only_a_bench_result_is_replaced_by_a_rerun(tmp_path):
    from adaptive_lm.bench import _is_bench_result
    cases = {"r.json": '{"bench": "train", "rows": []}', "notes.txt": "my notes", "list.json": '["bench"]',
             "bad.json": "{"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
    assert [_is_bench_result(tmp_path / n) for n in cases] == [True, False, False, False]
    assert not _is_bench_result(tmp_path / "missing.json")
