"""The unigram baseline's token counts are taken once, while the token cache is built (unigram_counts.npy
beside train.bin), so the end of a run reads a vocabulary-sized array, never the whole train split."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cptlab.data import tokens
from cptlab.data.tokens import UNIGRAM_FILE, DomainSpec, DomainTokens, prepare_domain


@pytest.fixture
def corpus(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    words = "the cat sat on a mat 数据 模型 def return ( ) : = 42".split()
    path = tmp_path / "corpus.txt"
    path.write_text("".join(" ".join(rng.choice(words, size=int(rng.integers(1, 30)))) + f" #{i}\n"
                            for i in range(400)), encoding="utf-8")
    return path


def test_counts_are_the_train_split_bincount(tokenizer_dir, corpus, tmp_path):
    spec = DomainSpec(name="toy", role="new", sources=(str(corpus),), heldout=0.1)
    dt = prepare_domain(spec, tokenizer_dir, tmp_path / "cache")
    counts = dt.unigram_counts()
    vocab = json.loads((dt.dir / "meta.json").read_text())["vocab_size"]
    assert counts.dtype == np.int64 and counts.shape == (vocab,)
    np.testing.assert_array_equal(counts, np.bincount(dt.train_tokens(), minlength=vocab))
    assert counts.sum() == dt.n_train_tokens and counts[dt.eos_id] == dt.n_train_docs  # one EOS per document


def test_a_cache_without_valid_counts_is_rebuilt(tokenizer_dir, corpus, tmp_path):
    spec = DomainSpec(name="toy", role="new", sources=(str(corpus),), heldout=0.1)
    first = prepare_domain(spec, tokenizer_dir, tmp_path / "cache")
    good = first.unigram_counts()
    np.save(first.dir / UNIGRAM_FILE, good[:-1])  # the wrong length: damaged
    again = prepare_domain(spec, tokenizer_dir, tmp_path / "cache")
    np.testing.assert_array_equal(again.unigram_counts(), good)
    (again.dir / UNIGRAM_FILE).unlink()  # missing (a cache of format 2 never had one)
    np.testing.assert_array_equal(prepare_domain(spec, tokenizer_dir, tmp_path / "cache").unigram_counts(), good)


# -- the end of a run ------------------------------------------------------------------------------------------


def synthetic_domain(directory: Path, n_train: int, vocab: int = 32000, seed: int = 0) -> DomainTokens:
    """A token cache of `n_train` random uint16 ids written and counted by the cache builder's own writer
    (`tokens._write_split`), 1M tokens per chunk."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = [min(1_000_000, n_train - start) for start in range(0, n_train, 1_000_000)]
    counts = np.zeros(vocab, dtype=np.int64)

    def encode(chunks):
        for (size,) in chunks:
            yield rng.integers(0, vocab, size=size, dtype=np.uint16)

    batches = ([size] for size in sizes)
    n = tokens._write_split(directory / "train.bin", batches, encode, lambda docs, ids: None, counts=counts)
    np.save(directory / UNIGRAM_FILE, counts)
    val = rng.integers(0, vocab, size=4096, dtype=np.uint16)
    val.tofile(directory / "val.bin")
    return DomainTokens(name=directory.name, role="new", weight=1.0, dir=directory, dtype="uint16",
                        n_train_tokens=n, n_val_tokens=val.size, n_train_docs=1, n_val_docs=1, val_bytes=val.size,
                        eos_id=0, stats={})


def end_of_run(domains: list[DomainTokens], run_dir: Path, vocab: int = 32000) -> dict:
    """summarize() (what summary.json holds) after a run on `domains`, with the run, trainer and module reduced
    to what it reads."""
    from omegaconf import OmegaConf

    from cptlab.run.plan_values import DataPlan
    from cptlab.run.summarize import summarize

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "tokenizer").mkdir(exist_ok=True)
    blocks = {d.name: torch.from_numpy(d.val_tokens()[: 4 * 64].astype(np.int64).reshape(4, 64)) for d in domains}
    evaluator = SimpleNamespace(first={}, latest={}, eval_sets=blocks, token_bytes=torch.ones(vocab, dtype=torch.long))
    cfg = OmegaConf.create({"name": "t", "data": {"batch_size": 1, "seq_len": 64, "replay_ratio": 0.0,
                                                  "split_seed": 0, "domains": {}}})
    data = DataPlan(specs=(), split_seed=0, on_bad_text="replace", num_proc=1, seq_len=64, doc_masking=False,
                    cache_dir=run_dir.parent / "cache")
    run = SimpleNamespace(cfg=cfg, data=data, run_dir=run_dir, domains=domains, tokenizer_dir=run_dir / "tokenizer",
                          tokenizer=[0] * vocab, base_rows=vocab, tokenizer_stats={}, setup={},
                          lightning=SimpleNamespace(evaluator=evaluator,
                                                    train_metrics=SimpleNamespace(latest={}, mean_tokens_per_sec=0.0)))
    module = SimpleNamespace(model=torch.nn.Linear(2, 2), batches_done=0, replay_share=0.0, skipped_batches=0)
    return summarize(run, SimpleNamespace(global_step=0, loggers=[]), module, overrides=[], started=0.0)


def test_the_end_of_a_run_reads_the_counts_not_the_train_split(tmp_path, monkeypatch):
    domain = synthetic_domain(tmp_path / "cache" / "toy", 50_000, vocab=500)
    opened = []
    real_memmap = np.memmap

    def memmap(filename, *args, **kwargs):
        opened.append(Path(filename).name)
        return real_memmap(filename, *args, **kwargs)

    def no_train_tokens(self):
        raise AssertionError("the train split was read at the end of the run")

    monkeypatch.setattr(np, "memmap", memmap)
    monkeypatch.setattr(DomainTokens, "train_tokens", no_train_tokens)
    summary = end_of_run([domain], tmp_path / "run", vocab=500)
    assert "train.bin" not in opened
    # the baseline is the add-one-smoothed unigram model of the train split's tokens, in bits per byte (1 byte/token)
    counts = np.bincount(np.fromfile(domain.dir / "train.bin", dtype=np.uint16), minlength=500) + 1.0
    targets = domain.val_tokens()[: 4 * 64].reshape(4, 64)[:, 1:].ravel()
    expected = -np.log2(counts / counts.sum())[targets].mean()
    assert summary["domains"]["toy"]["unigram_bpb"] == pytest.approx(expected)


MEASURE = """
import importlib.util, json, sys
from pathlib import Path
spec = importlib.util.spec_from_file_location("t", sys.argv[1])
t = importlib.util.module_from_spec(spec)
spec.loader.exec_module(t)

def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

cache, work = Path(sys.argv[2]), Path(sys.argv[3])
big = t.synthetic_domain(cache / "big", int(sys.argv[4]))
t.end_of_run([t.synthetic_domain(cache / "small", 10_000)], work / "warm")  # imports, fonts, first plot
before = peak_mb()
t.end_of_run([big], work / "run")
after = peak_mb()
# what the end of a run cost when it counted the train split itself (np.bincount over the memmap)
import numpy as np
np.bincount(np.asarray(big.train_tokens()), minlength=32000)
print(json.dumps({"peak_before_mb": before, "peak_after_mb": after, "peak_after_old_way_mb": peak_mb()}))
"""


@pytest.mark.slow
def test_ending_a_run_on_a_50m_token_cache_grows_peak_rss_by_under_50mb(tmp_path):
    """Peak resident memory (VmHWM) of a fresh process around the end of a run on a 50M-token train split;
    the old way (a bincount over the whole split) is measured after it, showing the check would see it."""
    proc = subprocess.run([sys.executable, "-c", MEASURE, __file__, str(tmp_path / "cache"), str(tmp_path / "work"),
                           str(50_000_000)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    print(m)
    assert m["peak_after_mb"] - m["peak_before_mb"] < 50, m
    assert m["peak_after_old_way_mb"] - m["peak_after_mb"] > 200, m  # 50M ids as int64 alone are 400 MB
