"""Token caches under concurrency and damage: four processes preparing the same domain at the same moment build it
once and all get the same arrays; a later call reuses it untouched; a truncated array is detected and rebuilt."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import cptlab.data.tokens as tokens
from cptlab.data.tokens import DomainSpec, prepare_domain

ROOT = Path(__file__).resolve().parents[2]
N_PROCS = 4

# Each racer imports everything, says it is ready, waits for the start file, then calls prepare_domain. The build
# is slowed down so that the other three are certainly waiting on it (on the lock, or before it) while it runs.
RACER = r"""
import json, sys, time
from pathlib import Path
import numpy as np
import cptlab.data.tokens as tokens
from cptlab.data.tokens import DomainSpec, prepare_domain

i, work, source, tokenizer_dir, cache_root = sys.argv[1:6]
work = Path(work)
builds = []
original = tokens._build

def slow_build(*args, **kwargs):
    builds.append(time.time())
    time.sleep(1.0)
    return original(*args, **kwargs)

tokens._build = slow_build
tokens.load_tokenizer(Path(tokenizer_dir))  # warm: the race is about the cache, not about import times
spec = DomainSpec(name="new", role="new", sources=(source,), heldout=0.1)
(work / f"ready-{i}").touch()
while not (work / "go").exists():
    time.sleep(0.002)
started = time.time()
dt = prepare_domain(spec, Path(tokenizer_dir), Path(cache_root))
np.save(work / f"train-{i}.npy", np.asarray(dt.train_tokens()))
np.save(work / f"val-{i}.npy", np.asarray(dt.val_tokens()))
(work / f"result-{i}.json").write_text(json.dumps(
    {"dir": str(dt.dir), "built": len(builds), "started": started, "n_train": dt.n_train_tokens}))
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    words = "the a cat dog sat on mat runs fast slow model data token train test value return def class".split()
    path = tmp_path_factory.mktemp("corpus") / "docs.txt"
    path.write_text("\n".join(" ".join(rng.choice(words, size=int(rng.integers(4, 14)))) + f" {i}."
                              for i in range(400)) + "\n", encoding="utf-8")
    return path


def spec_for(corpus: Path) -> DomainSpec:
    return DomainSpec(name="new", role="new", sources=(str(corpus),), heldout=0.1)


def cache_entries(cache_root: Path) -> list[Path]:
    """Everything in the token cache folder but the lock files (which FileLock leaves by design)."""
    return sorted(p for p in (cache_root / "tokens").iterdir() if not p.name.endswith(".lock"))


@pytest.fixture(scope="module")
def raced(tmp_path_factory, corpus, bpe_tokenizer_dir):
    work = tmp_path_factory.mktemp("race")
    cache_root = work / "cache"
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(i), str(work), str(corpus), str(bpe_tokenizer_dir),
                               str(cache_root)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(N_PROCS)]
    try:
        deadline = time.time() + 240
        while sum((work / f"ready-{i}").exists() for i in range(N_PROCS)) < N_PROCS:
            assert all(p.poll() is None for p in procs), [p.communicate()[0][-2000:] for p in procs]
            assert time.time() < deadline, "racers never got ready"
            time.sleep(0.05)
        (work / "go").touch()
        outputs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), outputs
    results = [json.loads((work / f"result-{i}.json").read_text()) for i in range(N_PROCS)]
    arrays = [(np.load(work / f"train-{i}.npy"), np.load(work / f"val-{i}.npy")) for i in range(N_PROCS)]
    return cache_root, results, arrays


def test_racing_processes_build_one_cache_and_agree(raced):
    cache_root, results, arrays = raced
    starts = [r["started"] for r in results]
    assert max(starts) - min(starts) < 0.5, starts  # they really called prepare_domain together
    assert sum(r["built"] for r in results) == 1, results  # one built, three waited and reused it
    final = Path(results[0]["dir"])
    assert {r["dir"] for r in results} == {str(final)}
    assert cache_entries(cache_root) == [final], "leftover temporary or duplicate cache directories"
    assert tokens._valid_meta(final, json.loads((final / "meta.json").read_text())["key"]) is not None
    train0, val0 = arrays[0]
    assert train0.size > 0 and val0.size > 0
    for train, val in arrays[1:]:
        assert np.array_equal(train, train0) and np.array_equal(val, val0)


@pytest.fixture
def build_spy(spy):
    return spy(tokens, "_build")


def test_a_later_call_reuses_the_cache_then_rebuilds_a_truncated_one(raced, corpus, bpe_tokenizer_dir, build_spy):
    cache_root, results, arrays = raced
    final = Path(results[0]["dir"])
    train_bin = final / "train.bin"
    stamp = {name: (final / name).stat().st_mtime_ns for name in ("train.bin", "val.bin", "meta.json")}

    reused = prepare_domain(spec_for(corpus), bpe_tokenizer_dir, cache_root)
    assert build_spy == [] and reused.dir == final
    assert {name: (final / name).stat().st_mtime_ns for name in stamp} == stamp
    assert np.array_equal(np.asarray(reused.train_tokens()), arrays[0][0])

    size = train_bin.stat().st_size
    with open(train_bin, "r+b") as f:  # a crash or a full disk cut the array short
        f.truncate(size // 2)
    rebuilt = prepare_domain(spec_for(corpus), bpe_tokenizer_dir, cache_root)
    assert len(build_spy) == 1, "the truncated cache was used instead of being rebuilt"
    assert rebuilt.dir == final and train_bin.stat().st_size == size
    assert rebuilt.n_train_tokens * np.dtype(rebuilt.dtype).itemsize == size
    assert np.array_equal(np.asarray(rebuilt.train_tokens()), arrays[0][0])
    assert np.array_equal(np.asarray(rebuilt.val_tokens()), arrays[0][1])
    assert cache_entries(cache_root) == [final]

    again = prepare_domain(spec_for(corpus), bpe_tokenizer_dir, cache_root)  # and the rebuilt one is reused
    assert len(build_spy) == 1 and again == rebuilt
