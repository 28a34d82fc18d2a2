"""Output paths: a directory (or file) of the user's is never replaced. `cptlab-tokenizer extend --out`,
`cptlab-export --out` and `publish_dir` replace only an absent path, an empty directory, or cptlab's own
output of the same kind (its marker: never a directory recognised by file names), and never an input; anything
else is refused in one line before any work, and nothing is touched (more in test_data_loss.py)."""

from __future__ import annotations

import json

import pytest

from cptlab.errors import CptlabError
from cptlab.utils.io import OUTPUT_MARKER, check_replaceable, replace_dir


@pytest.fixture
def user_dir(tmp_path):
    d = tmp_path / "mine"
    (d / "notes").mkdir(parents=True)
    (d / "notes" / "todo.txt").write_text("keep me\n")
    (d / "config.json").write_text('{"mine": true}\n')  # looks a little like a model directory; still the user's
    return d


def extend(*args: str):
    from cptlab.cli.tokenizer import main

    with pytest.raises(SystemExit) as info:
        main(["extend", *args])
    return info.value.code


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, rel):
    return rel.write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt", 200, 0)


def test_tokenizer_extend_refuses_a_user_directory_before_any_work(bpe_tokenizer_dir, corpus, user_dir, capsys,
                                                                   spy, rel):
    import cptlab.cli.tokenizer as cli

    reads = spy(cli, "read_texts")
    before = rel.snapshot(user_dir)
    code = extend("--base", str(bpe_tokenizer_dir), "--corpus", str(corpus), "--vocab-size", "300",
                  "--out", str(user_dir))
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith("cptlab-tokenizer: error: --out"), err
    assert str(user_dir) in err[0] and "nothing was changed" in err[0]
    assert rel.snapshot(user_dir) == before and not reads  # refused before the corpus was even read


def test_tokenizer_extend_refuses_an_existing_file_as_out(bpe_tokenizer_dir, corpus, tmp_path, capsys):
    mine = tmp_path / "notes.txt"
    mine.write_text("keep me\n")
    code = extend("--base", str(bpe_tokenizer_dir), "--corpus", str(corpus), "--vocab-size", "300",
                  "--out", str(mine))
    err = capsys.readouterr().err
    assert code == 2 and "exists and is not a directory" in err
    assert mine.read_text() == "keep me\n"


def test_tokenizer_extend_refuses_its_own_corpus_as_out(bpe_tokenizer_dir, corpus, capsys):
    before = corpus.read_bytes()
    code = extend("--base", str(bpe_tokenizer_dir), "--corpus", str(corpus), "--vocab-size", "300",
                  "--out", str(corpus))
    err = capsys.readouterr().err
    assert code == 2 and f"--out {corpus} is --corpus" in err and "an output never replaces an input" in err
    assert corpus.is_file() and corpus.read_bytes() == before


def test_tokenizer_extend_replaces_its_own_earlier_output(bpe_tokenizer_dir, tmp_path, capsys):
    from cptlab.cli.tokenizer import main

    # New-domain text: characters the base tokenizer lacks, so the extension adds pieces.
    hanzi = "猫狗坐在垫子上跑得快慢模型数据训练测试"
    corpus = tmp_path / "zh.txt"
    corpus.write_text("\n".join("".join(hanzi[(i * 7 + j) % len(hanzi)] for j in range(12)) for i in range(200)) + "\n",
                      encoding="utf-8")
    out = tmp_path / "tok"
    main(["extend", "--base", str(bpe_tokenizer_dir), "--corpus", str(corpus), "--vocab-size", "300", "--out",
          str(out)])
    assert json.loads((out / OUTPUT_MARKER).read_text())["kind"] == "tokenizer"
    (out / "tokenizer.json").write_text("stale")
    main(["extend", "--base", str(bpe_tokenizer_dir), "--corpus", str(corpus), "--vocab-size", "300", "--out",
          str(out)])
    assert (out / "tokenizer.json").read_text() != "stale"


def test_publish_dir_of_a_user_is_refused_at_validation(cptlab_train, tmp_path, user_dir, rel):
    new, old = rel.write_corpus(tmp_path / "new.txt", 200, 0), rel.write_corpus(tmp_path / "old.txt", 200, 1, " old")
    run_dir = tmp_path / "run"
    before = rel.snapshot(user_dir)
    proc = cptlab_train(*rel.tiny_run(new, old, run_dir, f"publish_dir={user_dir}"))
    line = rel.error_line(proc)
    assert "publish_dir" in line and str(user_dir) in line
    assert rel.snapshot(user_dir) == before
    assert not (run_dir / "checkpoints").exists() and not (cptlab_train.cache_dir / "tokenizers").exists()


@pytest.mark.parametrize("contents, allowed", [
    ({}, True),  # empty
    ({OUTPUT_MARKER: '{"kind": "model"}', "whatever.bin": "x"}, True),  # marked as cptlab's model output
    ({OUTPUT_MARKER: '{"kind": "tokenizer"}', "tokenizer.json": "{}"}, False),  # cptlab's, but another kind
    # Only the marker counts: a directory holding nothing but the names an export holds may be the user's own
    # model (a hub download, a git checkout), so it is refused like any other (issue 26).
    ({"config.json": "{}", "model.safetensors": "x", "tokenizer.json": "{}"}, False),
    ({"README.md": "x", ".gitattributes": "x", "model.safetensors": "x"}, False),  # hub-style, a dot-file too
    ({"config.json": "{}", "model.safetensors": "x", "thesis.tex": "x"}, False),  # an export plus a user's file
])
def test_check_replaceable(tmp_path, contents, allowed):
    d = tmp_path / "out"
    d.mkdir()
    for name, text in contents.items():
        (d / name).write_text(text)
    if allowed:
        assert check_replaceable(d, "model", "--out") == d
    else:
        with pytest.raises(CptlabError, match="not a model export written by cptlab"):
            check_replaceable(d, "model", "--out")


def test_replace_dir_refuses_a_path_under_a_file_and_marks_what_it_writes(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CptlabError, match="is a file"):
        replace_dir(tmp_path / "file" / "out", lambda tmp: None, kind="model", what="--out")
    out = replace_dir(tmp_path / "out", lambda tmp: (tmp / "config.json").write_text("{}"), kind="model", what="--out")
    assert json.loads((out / OUTPUT_MARKER).read_text())["kind"] == "model"
