"""Extend a byte-level BPE `tokenizer.json` (GPT-2 / Llama-3 / Qwen style) for a new domain: new tokens get
new ids, their merges rank after every base merge, and text the base already covers segments as before."""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from cptlab.errors import CptlabError
from cptlab.tokenizer.byte_lengths import _has_byte_level
from cptlab.tokenizer.extend import CJK_CHECK_TEXTS, covered_runs, keep_sample, segmentation_error
from cptlab.tokenizer.hf import TRICKY_TEXTS, load_tokenizer

TOKENIZER_JSON = "tokenizer.json"
# Copied from the base directory unchanged: the special tokens keep their ids, so their config stays valid.
SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
              "chat_template.json")  # fmt: skip
ALPHABET_SIZE = 256


@functools.cache
def byte_decoder() -> dict[str, int]:
    """GPT-2's map from the printable character standing for each byte back to the byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes)}


def token_bytes(token: str) -> bytes | None:
    """The bytes a byte-level token stands for, or None if it is not spelled in the byte alphabet."""
    table = byte_decoder()
    try:
        return bytes(table[char] for char in token)
    except KeyError:
        return None


def is_byte_level_bpe(spec: dict) -> bool:
    """Whether a parsed tokenizer.json is a BPE model behind a ByteLevel pre-tokenizer."""
    return spec.get("model", {}).get("type") == "BPE" and _has_byte_level(spec.get("pre_tokenizer"))


def _pair(merge) -> tuple[str, str]:
    # tokenizers < 0.20 wrote merges as "left right"; byte-level tokens never hold a literal space.
    return tuple(merge.split(" ", 1)) if isinstance(merge, str) else (merge[0], merge[1])


class CoveredText:
    """Which byte strings can occur in UTF-8 text made only of the characters the base covers.

    A character is covered when the base has it whole inside some token (it learned to merge its
    bytes); one-byte characters always are. A new token that cannot occur in covered text can never be
    formed there, so its merge cannot change how the base segments that text.
    """

    def __init__(self, base_tokens: Iterable[str]):
        chars = {chr(c) for c in range(128)}
        for token in base_tokens:
            data = token_bytes(token)
            if data is not None:
                # errors="ignore" drops exactly the incomplete sequences at the token's ends.
                chars.update(data.decode("utf-8", errors="ignore"))
        self.chars = chars
        encoded = [c.encode("utf-8") for c in chars if ord(c) >= 128]
        self.prefixes = {e[:i] for e in encoded for i in range(1, len(e))}
        self.suffixes = {e[i:] for e in encoded for i in range(1, len(e))}
        self.inner = {e[i:j] for e in encoded for i in range(1, len(e)) for j in range(i + 1, len(e))}

    def possible(self, data: bytes) -> bool:
        """Whether `data` can be a substring of the UTF-8 encoding of covered text."""
        head = 0
        while head < len(data) and head < 3 and 0x80 <= data[head] < 0xC0:
            head += 1
        if head == len(data):
            return data in self.suffixes or data in self.inner
        if head and data[:head] not in self.suffixes:
            return False
        rest = data[head:]
        # A truncated last character is a prefix of some character's encoding.
        for cut in range(len(rest), max(len(rest) - 4, -1), -1):
            try:
                middle = rest[:cut].decode("utf-8")
            except UnicodeDecodeError:
                continue
            tail = rest[cut:]
            return set(middle) <= self.chars and (not tail or tail in self.prefixes)
        return False


def extend_bpe(base_dir: Path, texts: Iterable[str], out_dir: Path, *, vocab_size: int,
               check_texts: list[str] | None = None) -> dict:
    """Train a byte-level BPE of `vocab_size` tokens on the domain `texts` with the base's pre-tokenizer,
    append its new tokens and merges to the base `tokenizer.json`, and write the HF tokenizer directory
    `out_dir`; return the merge stats. `check_texts` (a base-language sample) must encode exactly as with
    the base wherever the base covers every character; a difference raises CptlabError. As for
    SentencePiece, the stats count the sample's texts and those that change around uncovered characters."""
    base_dir, out_dir = Path(base_dir), Path(out_dir)
    spec = _read_spec(base_dir / TOKENIZER_JSON)
    model = spec["model"]
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise CptlabError(
            f"{base_dir / TOKENIZER_JSON}: BPE with continuing_subword_prefix/end_of_word_suffix cannot be extended"
        )
    if vocab_size <= ALPHABET_SIZE:
        raise CptlabError(
            f"tokenizer.vocab_size={vocab_size} is too small: a byte-level BPE needs more than its "
            f"{ALPHABET_SIZE} byte tokens to learn any merge"
        )
    base = Tokenizer.from_str(json.dumps(spec))
    sample: list[str] = []
    domain = _train_domain(base, keep_sample(texts, sample), vocab_size)
    covered = CoveredText(model["vocab"])
    new_spec, stats = merge_bpe(spec, domain, covered)
    if stats["added"] == 0:
        raise CptlabError(
            f"tokenizer.vocab_size={vocab_size} adds nothing to {base_dir}: none of the {stats['domain_pieces']} "
            "domain tokens holds a character the base lacks; raise tokenizer.vocab_size or check that the "
            "domain texts differ from the base language"
        )
    extended = Tokenizer.from_str(json.dumps(new_spec))

    out_dir.mkdir(parents=True, exist_ok=True)
    extended.save(str(out_dir / TOKENIZER_JSON))
    for name in SIDE_FILES:
        if (base_dir / name).is_file():
            shutil.copyfile(base_dir / name, out_dir / name)
    if not (out_dir / "tokenizer_config.json").is_file():
        from transformers import PreTrainedTokenizerFast

        PreTrainedTokenizerFast(tokenizer_object=extended, clean_up_tokenization_spaces=False).save_pretrained(
            str(out_dir)
        )
    stats["check_texts"] = len(check_texts or [])
    stats["check_texts_changed"] = 0
    if check_texts:
        stats["check_texts_changed"] = check_same_segmentation(base, extended, check_texts, covered.chars, out_dir)
    _verify(base_dir, base, out_dir, TRICKY_TEXTS + CJK_CHECK_TEXTS + sample)
    return stats


def _read_spec(path: Path) -> dict:
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CptlabError(f"cannot read {path}: {err}") from err
    if not is_byte_level_bpe(spec):
        raise CptlabError(f"{path} is not a byte-level BPE tokenizer (a BPE model behind a ByteLevel pre-tokenizer)")
    return spec


def _train_domain(base: Tokenizer, texts: Iterable[str], vocab_size: int) -> dict:
    """The serialized BPE model trained on `texts`, split into words exactly as the base splits them."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = base.normalizer
    tokenizer.pre_tokenizer = base.pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, show_progress=False, special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    tokenizer.train_from_iterator(texts, trainer)
    return json.loads(tokenizer.to_str())["model"]


def merge_bpe(spec: dict, domain: dict, covered: CoveredText | None = None) -> tuple[dict, dict]:
    """A copy of the base `spec` with the domain tokens and merges appended that cannot form in covered text.

    New ids start after the largest base id, added/special tokens included, so no base id moves and no
    new token takes a special token's id. New merges rank after every base merge and only build new
    tokens, so they fire only after the base's merges are done, and never in covered text (see CoveredText).
    """
    model = spec["model"]
    covered = covered or CoveredText(model["vocab"])
    vocab: dict[str, int] = dict(model["vocab"])
    added_tokens = spec.get("added_tokens", [])
    added_contents = {t["content"] for t in added_tokens}
    for token in added_tokens:
        # tokenizers gives an added token missing from the model vocab the id after the model's largest,
        # which would now be a new token's; in the model vocab (GPT-2 style) it keeps its own.
        vocab.setdefault(token["content"], token["id"])
    next_id = 1 + max([*vocab.values(), *(t["id"] for t in added_tokens)])
    base_count = len(set(vocab.values()))
    stats = dict(
        base_pieces=base_count, domain_pieces=len(domain["vocab"]), added=0, skipped_existing=0,
        skipped_covered=0, skipped_special=0, skipped_unreachable=0, merges_added=0, final_pieces=base_count,
    )  # fmt: skip

    def admit(token: str) -> bool:
        data = token_bytes(token)
        if token in vocab or token in added_contents:
            stats["skipped_existing"] += 1
        elif data is None:  # not spelled in the byte alphabet: a special token
            stats["skipped_special"] += 1
        elif covered.possible(data):
            stats["skipped_covered"] += 1
        else:
            return True
        return False

    merge_results = {"".join(_pair(merge)) for merge in domain["merges"]}
    as_strings = bool(model["merges"]) and isinstance(model["merges"][0], str)
    new_merges = []
    # Byte tokens the base lacks (only a base trained without the full alphabet lacks any).
    for token in sorted(domain["vocab"], key=domain["vocab"].get):
        if token not in merge_results and admit(token):
            vocab[token] = next_id
            next_id += 1
            stats["added"] += 1
    for merge in domain["merges"]:
        left, right = _pair(merge)
        if not admit(left + right):
            continue
        if left not in vocab or right not in vocab:
            # Built from a token that was not admitted: the extended tokenizer could never form it.
            stats["skipped_unreachable"] += 1
            continue
        vocab[left + right] = next_id
        next_id += 1
        stats["added"] += 1
        new_merges.append(f"{left} {right}" if as_strings else [left, right])
    stats["merges_added"] = len(new_merges)
    stats["final_pieces"] = base_count + stats["added"]
    new_spec = {**spec, "model": {**model, "vocab": vocab, "merges": [*model["merges"], *new_merges]}}
    return new_spec, stats


def check_same_segmentation(base: Tokenizer, extended: Tokenizer, texts: list[str], chars: set[str],
                            where: Path) -> int:
    """Raise CptlabError unless `extended` encodes every covered run of `texts` exactly like `base`; return
    how many whole texts encode differently (each has a character the base does not cover).

    Around a character the base spells in bytes the extension may rightly use a new token, so only the
    runs made of covered characters must match.
    """
    runs = [run for text in texts for run in covered_runs(text, chars, escaped_space=False)]
    before = base.encode_batch(runs, add_special_tokens=False)
    after = extended.encode_batch(runs, add_special_tokens=False)
    for run, old, new in zip(runs, before, after):
        if old.ids != new.ids:
            raise segmentation_error(where, run, new.tokens, old.tokens)
    before = base.encode_batch(texts, add_special_tokens=False)
    after = extended.encode_batch(texts, add_special_tokens=False)
    return sum(old.ids != new.ids for old, new in zip(before, after))


def _verify(base_dir: Path, base: Tokenizer, out_dir: Path, texts: list[str]) -> None:
    """The saved directory loads through AutoTokenizer with the base's special tokens and decodes every
    text back to what the base decodes it to (the text itself, for a lossless base)."""
    tokenizer = load_tokenizer(out_dir)
    base_vocab = base.get_vocab(with_added_tokens=True)
    moved = [t for t, i in base_vocab.items() if tokenizer.convert_tokens_to_ids(t) != i]
    if moved:
        raise CptlabError(f"extended tokenizer {out_dir} changed the ids of base tokens {moved[:5]}")
    if (base_dir / "tokenizer_config.json").is_file():
        base_specials = load_tokenizer(base_dir).all_special_ids
        if tokenizer.all_special_ids != base_specials:
            raise CptlabError(
                f"extended tokenizer {out_dir} has special ids {tokenizer.all_special_ids}, the base {base_specials}"
            )
    backend = tokenizer.backend_tokenizer
    for text in texts:
        expected = base.decode(base.encode(text, add_special_tokens=False).ids, skip_special_tokens=False)
        got = backend.decode(backend.encode(text, add_special_tokens=False).ids, skip_special_tokens=False)
        if got != expected:
            raise CptlabError(f"extended tokenizer {out_dir} decodes {text[:80]!r} as {got[:80]!r}")
