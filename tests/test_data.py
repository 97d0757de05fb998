"""Corpora, splits and batches."""
import json
import re

import pytest
import torch

from adaptive_lm import data
from adaptive_lm.errors import DataError, UsageError


def test_data_dir_flag_env_and_errors(tmp_path, monkeypatch):
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path))
    assert data.data_dir() == tmp_path
    assert data.data_dir(str(tmp_path)) == tmp_path
    with pytest.raises(DataError, match="does not exist"):
        data.data_dir(str(tmp_path / "missing"))


def test_single_file_split_is_by_position(corpus):
    text = corpus.read_text()
    train, valid = data.read_text(str(corpus), "train"), data.read_text(str(corpus), "valid")
    assert train + valid == text
    assert len(valid) == len(text) - int(len(text) * 0.9)
    assert data.read_text(str(corpus), "test") == valid


def test_named_corpus_with_own_splits(tmp_path):
    d = tmp_path / "text" / "pydocs"
    d.mkdir(parents=True)
    for s in data.SPLITS:
        (d / f"{s}.txt").write_text(f"{s} text\n")
    assert data.read_text("pydocs", "test", data_dir_flag=str(tmp_path)) == "test text\n"


def test_bad_corpora_raise_clear_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        data.read_text(str(tmp_path / "none.txt"))
    (tmp_path / "empty.txt").write_text("   \n")
    with pytest.raises(DataError, match="empty"):
        data.read_text(str(tmp_path / "empty.txt"))
    with pytest.raises(DataError, match="folder"):
        data.read_text(str(tmp_path))
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(DataError, match="UTF-8"):
        data.read_text(str(tmp_path / "bin.txt"))


def test_batches_are_a_function_of_seed_and_step_and_shard_the_global_batch():
    s = data.TokenStream(torch.arange(1000), 8)
    x, y = data.lm_batch(s, 8, seed=3, step=5)
    assert torch.equal(y[:, :-1], x[:, 1:])
    x2, _ = data.lm_batch(s, 8, seed=3, step=5)
    assert torch.equal(x, x2)
    assert not torch.equal(x, data.lm_batch(s, 8, seed=3, step=6)[0])
    parts = [data.lm_batch(s, 8, seed=3, step=5, micro=m, n_micro=2, rank=r, world=2)[0]
             for m in range(2) for r in range(2)]
    assert torch.equal(torch.cat(parts), x)


def test_eval_windows_first_all_or_spread_over_the_stream():
    s = data.TokenStream(torch.arange(101), 10)                 # 10 whole windows (+1 target token)
    x, y = s.eval_windows()
    assert x.shape == (10, 10) and torch.equal(x.flatten(), torch.arange(100)) and torch.equal(y, x + 1)
    first, _ = s.eval_windows(3)
    assert first[:, 0].tolist() == [0, 10, 20]
    spread, sy = s.eval_windows(3, spread=True)
    assert spread[:, 0].tolist() == [0, 30, 60] and torch.equal(sy, spread + 1)
    assert torch.equal(s.eval_windows(50, spread=True)[0], x)      # asking for more than there are: all


def test_stream_shorter_than_a_window_is_refused():
    with pytest.raises(DataError, match="fewer"):
        data.TokenStream(torch.arange(5), 8)


def _gsm8k_folder(tmp_path):
    d = tmp_path / "benchmarks"
    d.mkdir(parents=True)
    for split, n in (("train", 3), ("test", 2)):
        rows = [json.dumps({"question": f"{split} q{i}?", "answer": f"a{i}\n#### {i}"}) for i in range(n)]
        (d / f"gsm8k_{split}.jsonl").write_text("\n".join(rows) + "\n")
    return tmp_path


def test_jsonl_corpus_is_question_then_answer_and_valid_reads_test(tmp_path):
    dd = str(_gsm8k_folder(tmp_path))
    assert data.read_text("gsm8k", "train", data_dir_flag=dd) == \
        "train q0?\na0\n#### 0\n\ntrain q1?\na1\n#### 1\n\ntrain q2?\na2\n#### 2"
    assert data.read_text("gsm8k", "valid", data_dir_flag=dd) == data.read_text("gsm8k", "test", data_dir_flag=dd)
    test_file = tmp_path / "benchmarks" / "gsm8k_test.jsonl"
    test_file.write_text(json.dumps({"question": "a\u2028b", "answer": "c"}, ensure_ascii=False) + "\n")
    assert data.read_text("gsm8k", "test", data_dir_flag=dd) == "a\u2028b\nc"      # one record, not two lines
    for bad, says in (('{"question": "q"}', "line 1 lacks the field(s) answer"),
                      ('{"question": null, "answer": "a"}', "record 1: question is not text"),
                      ('[1, 2]', "line 1 is not a JSON object"), ('not json', "line 1 is not valid JSON")):
        test_file.write_text(bad + "\n")
        with pytest.raises(DataError, match=re.escape(says)):
            data.read_text("gsm8k", "test", data_dir_flag=dd)


def test_plus_joins_corpora_each_split_by_its_own_rule(tmp_path, corpus):
    dd = str(_gsm8k_folder(tmp_path))
    for split in data.SPLITS:
        joined = data.read_text(f"gsm8k+{corpus}", split, data_dir_flag=dd)
        assert joined == data.read_text("gsm8k", split, data_dir_flag=dd) + "\n\n" + data.read_text(str(corpus), split)
    for name in ("gsm8k++pydocs", "gsm8k+nope.txt", str(tmp_path / "c++.txt")):   # not a join: one missing file
        with pytest.raises(DataError, match=f"corpus file .*{name[-8:].replace('+', '[+]')} does not exist"):
            data.read_text(name, data_dir_flag=dd)
    plus = tmp_path / "c++.txt"
    plus.write_text("a file whose name has plus signs\n" * 20)
    assert data.read_text(str(plus), "train").startswith("a file whose")
    (tmp_path / "benchmarks" / "gsm8k_test.jsonl").unlink()
    with pytest.raises(DataError, match="corpus 'gsm8k[+].*': corpus file .*gsm8k_test.jsonl does not exist"):
        data.read_text(f"gsm8k+{corpus}", "test", data_dir_flag=dd)


def test_a_generated_corpus_needs_no_data_folder_and_joins(monkeypatch, corpus):
    monkeypatch.setitem(data.GENERATED, "gen", lambda split: f"text of {split}\n")
    monkeypatch.setenv(data.ENV_VAR, "/nonexistent/folder")          # never consulted for a generated corpus
    assert [data.read_text("gen", s) for s in data.SPLITS] == ["text of train\n", "text of valid\n", "text of test\n"]
    assert data.read_text(f"gen+{corpus}", "valid") == "text of valid\n" + "\n\n" + data.read_text(str(corpus), "valid")
    assert "gen" in data.known_corpora()
    with pytest.raises(UsageError, match="unknown split"):
        data.read_text("gen", "dev")


def test_a_generated_corpus_name_wins_over_a_file_or_folder_of_that_name(tmp_path, monkeypatch):
    monkeypatch.setitem(data.GENERATED, "gen", lambda split: f"made {split}\n")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gen").mkdir()                                          # e.g. a run folder called like the corpus
    assert data.read_text("gen", "test") == "made test\n"
    (tmp_path / "gen").rmdir()
    (tmp_path / "gen").write_text("a user file\n" * 10)
    assert data.read_text("gen", "test") == "made test\n"
    assert data.read_text("./gen", "train").startswith("a user file")   # the file, named as a path
    with pytest.raises(ValueError, match="pydocs"):
        data.register_corpus("pydocs", lambda split: "")


def test_an_unregistered_code_corpus_names_the_import(monkeypatch):
    monkeypatch.setattr(data, "GENERATED", {})
    with pytest.raises(DataError, match="import adaptive_lm.tasks"):
        data.read_text("arith")
