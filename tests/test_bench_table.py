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
