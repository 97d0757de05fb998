"""`adaptive-lm compress` / `decompress`: round trips through files, one-line errors with a non-zero
exit, and nothing the user had overwritten or left half-written."""
from adaptive_lm.cli import main

DATA = b"def f(x):\n    return x + 1\n\xff\xfe binary tail \x00" * 20


def _files(tmp_path):
    src = tmp_path / "in.bin"
    src.write_bytes(DATA)
    return src, tmp_path / "in.bin.almz", tmp_path / "back.bin"


def test_roundtrip_through_the_cli(codec_lm, tmp_path, capsys):
    src, z, back = _files(tmp_path)
    assert main(["compress", str(src), "--model", str(codec_lm[0]), "--quiet"]) == 0   # default output name
    assert z.exists() and "bits/byte" in capsys.readouterr().out
    assert main(["decompress", str(z), "-o", str(back), "--quiet"]) == 0             # model from the header
    assert back.read_bytes() == DATA


def test_adapt_chooses_the_mixing_and_the_file_remembers_it(codec_lm, tmp_path, capsys):
    """--adapt 0 codes with the LM alone; on this repetitive input the default mixing is smaller;
    either decodes without being told (the header says)."""
    src, _, back = _files(tmp_path)
    sizes = {}
    for k in ("0", "1", "3"):
        z = tmp_path / f"in.{k}.almz"
        assert main(["compress", str(src), "-o", str(z), "--model", str(codec_lm[0]), "--adapt", k, "--quiet"]) == 0
        assert main(["decompress", str(z), "-o", str(back), "--quiet", "--force"]) == 0
        assert back.read_bytes() == DATA
        sizes[k] = z.stat().st_size
    assert sizes["3"] < sizes["0"] and sizes["1"] < sizes["0"], sizes


def test_existing_output_is_not_overwritten(codec_lm, tmp_path, capsys):
    src, z, _ = _files(tmp_path)
    z.write_bytes(b"precious")
    assert main(["compress", str(src), "-o", str(z), "--model", str(codec_lm[0]), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--force" in err
    assert z.read_bytes() == b"precious"
    assert main(["compress", str(src), "-o", str(z), "--model", str(codec_lm[0]), "--quiet", "--force"]) == 0
    assert z.read_bytes() != b"precious"


def test_corrupt_file_is_refused_and_leaves_no_output(codec_lm, tmp_path, capsys):
    src, z, back = _files(tmp_path)
    assert main(["compress", str(src), "-o", str(z), "--model", str(codec_lm[0]), "--quiet"]) == 0
    blob = bytearray(z.read_bytes())
    blob[len(blob) // 2] ^= 0x10
    z.write_bytes(bytes(blob))
    assert main(["decompress", str(z), "-o", str(back), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("adaptive-lm: error:") and "corrupted" in err and "Traceback" not in err
    assert {p.name for p in tmp_path.iterdir()} == {"in.bin", "in.bin.almz"}      # no output, no temp file


def test_wrong_model_is_refused(codec_lm, other_lm, tmp_path, capsys):
    src, z, back = _files(tmp_path)
    assert main(["compress", str(src), "-o", str(z), "--model", str(codec_lm[0]), "--quiet"]) == 0
    assert main(["decompress", str(z), "-o", str(back), "--model", str(other_lm), "--quiet"]) == 1
    assert "pass --model" in capsys.readouterr().err and not back.exists()


def test_bad_inputs_are_one_line_errors(codec_lm, tmp_path, capsys):
    src, z, back = _files(tmp_path)
    cases = [(["compress", str(tmp_path / "missing")], 2, "no such file"),
             (["decompress", str(src), "-o", str(back)], 1, "bad magic"),
             (["compress", str(src), "-o", str(src), "--model", str(codec_lm[0])], 2, "overwrite the input"),
             (["compress", str(src), "--model", str(tmp_path / "nomodel")], 1, ""),
             (["compress", str(src), "--model", str(codec_lm[0]), "--chunk", "9999"], 2, "chunk must be within"),
             (["compress", str(src), "--model", str(codec_lm[0]), "--workers", "-1"], 2, "workers must be"),
             (["compress", str(src), "--model", str(codec_lm[0]), "--adapt", "16"], 2, "adapt must be within"),
             (["compress", str(src), "--model", str(codec_lm[0]), "--adapt", "-1"], 2, "adapt must be within")]
    for argv, code, text in cases:
        assert main(argv + ["--quiet"]) == code, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("adaptive-lm: error:") and "\n" not in err and text in err, (argv, err)
    assert not back.exists() and not z.exists()


def test_another_process_with_other_thread_counts_decodes_it(codec_lm, tmp_path, capsys):
    """Compressed here with 2 workers; decompressed in a fresh process limited to one thread
    (OMP_NUM_THREADS=1, --workers 1) and in one with 3 workers: the same bytes."""
    import os
    import subprocess
    import sys
    src, z, back = _files(tmp_path)
    src.write_bytes(DATA * 3)
    assert main(["compress", str(src), "--model", str(codec_lm[0]), "--chunk", "16", "--workers", "2", "--quiet"]) == 0
    for i, (threads, workers) in enumerate((("1", "1"), ("3", "3"))):
        out = tmp_path / f"back{i}.bin"
        env = dict(os.environ, OMP_NUM_THREADS=threads)
        r = subprocess.run([sys.executable, "-m", "adaptive_lm", "decompress", str(z), "-o", str(out),
                            "--workers", workers, "--quiet"], env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert out.read_bytes() == DATA * 3


class _Stream:
    """A binary standard stream for the CLI: .buffer, isatty()."""
    def __init__(self, data: bytes = b"", tty: bool = False):
        import io
        self.buffer, self.tty = io.BytesIO(data), tty

    def isatty(self):
        return self.tty

    def write(self, text: str):                                       # print()'s text, kept apart
        self.text = getattr(self, "text", "") + text

    def flush(self):
        pass


def test_standard_input_and_output(codec_lm, tmp_path, capsys, monkeypatch):
    """`-` reads standard input and writes standard output (the default for input `-`); the
    summary then goes to standard error; compressed bytes never go onto a terminal."""
    out = _Stream()
    monkeypatch.setattr("sys.stdin", _Stream(DATA))
    monkeypatch.setattr("sys.stdout", out)
    assert main(["compress", "-", "--model", str(codec_lm[0]), "--quiet"]) == 0
    blob = out.buffer.getvalue()
    assert blob.startswith(b"ALMZ") and "bits/byte" in capsys.readouterr().err
    back = _Stream()
    monkeypatch.setattr("sys.stdin", _Stream(blob))
    monkeypatch.setattr("sys.stdout", back)
    assert main(["decompress", "-", "--quiet"]) == 0
    assert back.buffer.getvalue() == DATA
    monkeypatch.setattr("sys.stdin", _Stream(blob))                    # - in, a file out
    assert main(["decompress", "-", "-o", str(tmp_path / "f.bin"), "--quiet"]) == 0
    assert (tmp_path / "f.bin").read_bytes() == DATA and "f.bin" in back.text
    monkeypatch.setattr("sys.stdin", _Stream(tty=True))
    assert main(["compress", "-", "--model", str(codec_lm[0]), "--quiet"]) == 2
    assert "terminal" in capsys.readouterr().err
    src = tmp_path / "in.bin"
    src.write_bytes(DATA)
    monkeypatch.setattr("sys.stdout", _Stream(tty=True))
    assert main(["compress", str(src), "-o", "-", "--model", str(codec_lm[0]), "--quiet"]) == 2
    assert "not written to a terminal" in capsys.readouterr().err
