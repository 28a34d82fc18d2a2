"""Extend a byte-level BPE `tokenizer.json` (GPT-2 / Llama-3 / Qwen style) for a new domain: new tokens get
new ids, their merges rank after every base merge, and base-language text segments as before (the admission
rules of cptlab.tokenizer.extend, applied to the characters a token's bytes can stand for)."""

from __future__ import annotations

import bisect
import functools
import json
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from cptlab.errors import CptlabError
from cptlab.tokenizer.byte_lengths import _has_byte_level
from cptlab.tokenizer.extend import (
    CJK_CHECK_TEXTS,
    Admission,
    _read_lines,
    _skips,
    _spooled,
    check_stats,
    empty_stats,
    foreign_windows,
    guarded_texts,
    keep_sample,
    make_admission,
    nothing_foreign_error,
    peek_foreign,
    segmentation_error,
    train_to_target,
    training_size,
)
from cptlab.tokenizer.hf import TRICKY_TEXTS, load_tokenizer
from cptlab.tokenizer.scripts import COMMON, scripts_in_range

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


# The code points a UTF-8 encoding of n bytes can hold, and the bits its lead byte carries.
_CODE_RANGE = {2: (0x80, 0x7FF), 3: (0x800, 0xFFFF), 4: (0x10000, 0x10FFFF)}
_LEAD_BITS = {2: 5, 3: 4, 4: 3}


class BaseText:
    """Which byte strings can occur in the UTF-8 encoding of text made only of allowed characters.

    `allowed(char)` says whether a character may occur; `allowed_range(first, last)` whether any code point of
    first..last may. A new token whose bytes cannot occur in such text can never be formed there, so its merge
    cannot change how the base segments that text. When in doubt the answer is "possible" (the token is skipped).
    """

    def __init__(self, allowed: Callable[[str], bool], allowed_range: Callable[[int, int], bool]):
        self.allowed = allowed
        self.allowed_range = allowed_range

    def possible(self, data: bytes) -> bool:
        """Whether `data` can be a substring of the UTF-8 encoding of allowed text."""
        head = 0
        while head < len(data) and head < 3 and 0x80 <= data[head] < 0xC0:
            head += 1
        if head == len(data):
            return self._continuation(data, suffix_only=False)
        if head and not self._continuation(data[:head], suffix_only=True):
            return False
        rest = data[head:]
        # A truncated last character is a prefix of some character's encoding.
        for cut in range(len(rest), max(len(rest) - 4, -1), -1):
            try:
                middle = rest[:cut].decode("utf-8")
            except UnicodeDecodeError:
                continue
            tail = rest[cut:]
            return all(map(self.allowed, middle)) and (not tail or self._prefix(tail))
        return False

    def _prefix(self, tail: bytes) -> bool:
        """Whether an allowed character's encoding starts with `tail` (a lead byte and continuation bytes):
        the code points whose encoding starts so form one range."""
        lead = tail[0]
        size = 2 if 0xC2 <= lead < 0xE0 else 3 if 0xE0 <= lead < 0xF0 else 4 if 0xF0 <= lead < 0xF5 else 0
        if not size or len(tail) >= size or any(not 0x80 <= b < 0xC0 for b in tail[1:]):
            return False
        value = lead & ((1 << _LEAD_BITS[size]) - 1)
        for byte in tail[1:]:
            value = value << 6 | (byte & 0x3F)
        free = 6 * (size - len(tail))
        first, last = _CODE_RANGE[size]
        first, last = max(first, value << free), min(last, (value << free) | ((1 << free) - 1))
        return first <= last and self.allowed_range(first, last)

    def _continuation(self, data: bytes, suffix_only: bool) -> bool:
        """Whether continuation bytes `data` occur inside (at the end, if `suffix_only`) an allowed character's
        encoding: for each length and position, the code points with those bits form ranges, one per value of
        the bits before them."""
        value = 0
        for byte in data:
            value = value << 6 | (byte & 0x3F)
        for size in (2, 3, 4):
            for at in range(1, size - len(data) + 1):
                after = size - at - len(data)
                if suffix_only and after:
                    continue
                free = 6 * after
                for before in range(1 << (_LEAD_BITS[size] + 6 * (at - 1))):
                    low = ((before << 6 * len(data)) | value) << free
                    first, last = _CODE_RANGE[size]
                    first, last = max(first, low), min(last, low | ((1 << free) - 1))
                    if first <= last and self.allowed_range(first, last):
                        return True
        return False


class CoveredText(BaseText):
    """admit=strict: the characters the base covers, i.e. has whole inside some token (it learned to merge
    their bytes); one-byte characters always are."""

    def __init__(self, base_tokens: Iterable[str]):
        chars = {chr(c) for c in range(128)}
        for token in base_tokens:
            data = token_bytes(token)
            if data is not None:
                # errors="ignore" drops exactly the incomplete sequences at the token's ends.
                chars.update(data.decode("utf-8", errors="ignore"))
        self.chars = chars
        codes = sorted(map(ord, chars))

        def allowed_range(first: int, last: int) -> bool:
            at = bisect.bisect_left(codes, first)
            return at < len(codes) and codes[at] <= last

        super().__init__(chars.__contains__, allowed_range)


class ScriptText(BaseText):
    """admit=script/auto: every character of the base's own scripts or of none (digits, punctuation, spaces)."""

    def __init__(self, admission: Admission):
        own = {COMMON, *admission.base_scripts}
        super().__init__(lambda c: not admission.foreign(c),
                         lambda first, last: bool(scripts_in_range(first, last) & own))


class NoText(BaseText):
    """admit=all: nothing is protected, every token may be added."""

    def __init__(self):
        super().__init__(lambda c: False, lambda first, last: False)

    def possible(self, data: bytes) -> bool:
        return False


def base_text(admission: Admission, base_tokens: Iterable[str]) -> BaseText:
    if admission.rule == "strict":
        return CoveredText(base_tokens)
    return NoText() if admission.rule == "all" else ScriptText(admission)


def decoded_tokens(tokens: Iterable[str]) -> Iterator[str]:
    """The text of each byte-level token (incomplete characters at its ends dropped)."""
    for token in tokens:
        data = token_bytes(token)
        if data is not None:
            yield data.decode("utf-8", errors="ignore")


def extend_bpe(base_dir: Path, texts: Iterable[str], out_dir: Path, *, vocab_size: int | None = None,
               add_pieces: int | None = None, admit: str = "auto", check_texts: list[str] | None = None,
               base_chars: set[str] | None = None) -> dict:
    """Train a byte-level BPE on the domain `texts` with the base's pre-tokenizer, append the new tokens and
    merges `admit` lets in to the base `tokenizer.json`, and write the HF tokenizer directory `out_dir`; return
    the merge stats.

    The rules are SentencePiece's (cptlab.tokenizer.extend) on the characters the token bytes can stand for: a
    token is admitted only if its bytes cannot occur in the UTF-8 of text free of foreign characters (`BaseText`).
    `add_pieces` appends exactly that many tokens, the first in the domain's merge order; otherwise `vocab_size`
    is the domain model's size. `check_texts` (a base-language sample) is checked and counted as for
    SentencePiece; `base_chars` are the characters of all the base-language text at hand (admit=auto).
    """
    if add_pieces is None and vocab_size is None:
        raise CptlabError("tokenizer=extend needs tokenizer.add_pieces or tokenizer.vocab_size")
    if add_pieces is not None and add_pieces < 1:
        raise CptlabError(f"tokenizer.add_pieces={add_pieces} must be a positive number of pieces")
    base_dir, out_dir = Path(base_dir), Path(out_dir)
    spec = _read_spec(base_dir / TOKENIZER_JSON)
    model = spec["model"]
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise CptlabError(
            f"{base_dir / TOKENIZER_JSON}: BPE with continuing_subword_prefix/end_of_word_suffix cannot be extended"
        )
    if vocab_size is not None and add_pieces is None and vocab_size <= ALPHABET_SIZE:
        raise CptlabError(
            f"tokenizer.vocab_size={vocab_size} is too small: a byte-level BPE needs more than its "
            f"{ALPHABET_SIZE} byte tokens to learn any merge"
        )
    base = Tokenizer.from_str(json.dumps(spec))
    covered = CoveredText(model["vocab"])
    admission = make_admission(admit, covered.chars, decoded_tokens(model["vocab"]), check_texts,
                               sample_chars=base_chars)
    texts, found, peeked = peek_foreign(texts, admission)
    if not found:
        raise nothing_foreign_error(admission, base_dir, peeked)
    allowed = covered if admit == "strict" else base_text(admission, model["vocab"])

    sample: list[str] = []
    with tempfile.TemporaryDirectory(prefix="cptlab-domain-bpe-") as tmp:
        spool = Path(tmp) / "corpus.txt"
        if add_pieces is None:
            size, docs = vocab_size, keep_sample(texts, sample)
        else:
            overlap = sum(1 for text in decoded_tokens(model["vocab"]) if len(text) == 1 and not text.isascii())
            size, docs = training_size(add_pieces, overlap), _spooled(keep_sample(texts, sample), spool)
        def train_and_merge(docs, size):
            domain = _train_domain(base, docs, size)
            if check_texts and admission.rule == "auto":
                # A token is searched in the sample as bytes, so the windows reach its length in bytes; the
                # space stands for a prefix space a ByteLevel pre-tokenizer may add.
                norm = base.normalizer.normalize_str if base.normalizer else str
                longest = max(len(token_bytes(t) or t) for t in domain["vocab"])
                admission.sample_windows = foreign_windows(check_texts, admission.foreign,
                                                           lambda t: " " + norm(t), longest)  # fmt: skip
            return domain, *merge_bpe(spec, domain, allowed, admission, limit=add_pieces)

        domain, new_spec, stats, trainings = train_to_target(
            train_and_merge, docs, size, add_pieces=add_pieces, admit=admit, unit="tokens",
            domain_size=lambda d: len(d["vocab"]), again=lambda: _read_lines(spool),
        )  # fmt: skip
    if stats["added"] == 0:
        raise CptlabError(
            f"tokenizer.vocab_size={vocab_size} adds nothing to {base_dir} under tokenizer.admit={admit}: none of "
            f"the {stats['domain_pieces']} domain tokens is admissible (skipped: {_skips(stats)}); raise "
            "tokenizer.vocab_size or check that the domain texts differ from the base language"
        )
    stats.update(domain_vocab_size=len(domain["vocab"]), domain_trainings=trainings, add_pieces=add_pieces)
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
    changed = check_same_segmentation(base, extended, check_texts or [], admission, out_dir)
    stats.update(check_stats(changed, len(check_texts or [])))
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


def merge_bpe(spec: dict, domain: dict, allowed: BaseText | None = None, admission: Admission | None = None,
              limit: int | None = None) -> tuple[dict, dict]:
    """A copy of the base `spec` with the domain tokens and merges appended that cannot form in `allowed` text
    (default: admit=script), at most `limit` of them (the first in the domain's merge order), and the stats.

    New ids start after the largest base id, added/special tokens included, so no base id moves and no
    new token takes a special token's id. New merges rank after every base merge and only build new
    tokens, so they fire only after the base's merges are done, and never in allowed text (see BaseText).
    """
    model = spec["model"]
    if admission is None:
        admission = make_admission("script", set(), decoded_tokens(model["vocab"]))
    allowed = allowed or base_text(admission, model["vocab"])
    vocab: dict[str, int] = dict(model["vocab"])
    added_tokens = spec.get("added_tokens", [])
    added_contents = {t["content"] for t in added_tokens}
    for token in added_tokens:
        # tokenizers gives an added token missing from the model vocab the id after the model's largest,
        # which would now be a new token's; in the model vocab (GPT-2 style) it keeps its own.
        vocab.setdefault(token["content"], token["id"])
    next_id = 1 + max([*vocab.values(), *(t["id"] for t in added_tokens)])
    base_count = len(set(vocab.values()))
    stats = empty_stats(base_count, len(domain["vocab"]), admission)
    stats["merges_added"] = 0
    stats["bridges_added"] = 0
    base_reason = "skipped_covered" if admission.rule == "strict" else "skipped_base_script"
    sample = admission.sample_windows.encode("utf-8") if admission.sample_windows else None
    new_tokens: list[str] = []

    def skip_reason(token: str) -> str | None:
        data = token_bytes(token)
        if token in vocab or token in added_contents:
            return "skipped_existing"
        if data is None:  # not spelled in the byte alphabet: a special token
            return "skipped_special"
        if allowed.possible(data):
            return base_reason
        if sample is not None and data in sample:
            return "skipped_in_sample"
        return None

    def plan(token: str, failed: set[str]) -> list[tuple[str, str]] | None:
        """Merges that build the admissible `token` from tokens the extension has, adding admissible
        intermediate tokens where a part is missing (say the domain merged two continuation bytes that also
        end a Latin letter, so that part may not be added); None if there is no such way."""
        if token in vocab:
            return []
        if token in failed or len(token) < 2 or skip_reason(token) is not None:
            return None
        cuts = [(token[:cut], token[cut:]) for cut in range(1, len(token))]
        for left, right in cuts:
            if left in vocab and right in vocab and not {left, right} & added_contents:
                return [(left, right)]
        for left, right in cuts:
            for known, other in ((left, right), (right, left)):
                if known in vocab and known not in added_contents:
                    steps = plan(other, failed)
                    if steps is not None:
                        return [*steps, (left, right)]
        failed.add(token)
        return None

    def admit_pair(left: str, right: str) -> list[tuple[str, str]]:
        reason = skip_reason(left + right)
        if reason is None and limit is not None and len(new_tokens) >= limit:
            reason = "skipped_surplus"
        if reason is not None:
            stats[reason] += 1
            return []
        vocab[left + right] = next_id + len(new_tokens)
        new_tokens.append(left + right)
        return [(left, right)]

    def admit(token: str) -> list[tuple[str, str]]:
        """The merges that add `token` (and the intermediate tokens it needs), or [] with the skip counted."""
        reason = skip_reason(token)
        steps = plan(token, set()) if reason is None else None
        if reason is None and steps is None:
            # Built from a token that was not admitted: the extended tokenizer could never form it.
            reason = "skipped_unreachable"
        if reason is None and limit is not None and len(new_tokens) + len(steps) > limit:
            reason = "skipped_surplus"
        if reason is not None:
            stats[reason] += 1
            return []
        for left, right in steps:
            vocab[left + right] = next_id + len(new_tokens)
            new_tokens.append(left + right)
        stats["bridges_added"] += len(steps) - 1
        return steps

    merge_results = {"".join(_pair(merge)) for merge in domain["merges"]}
    as_strings = bool(model["merges"]) and isinstance(model["merges"][0], str)
    new_merges = []
    # Byte tokens the base lacks (only a base trained without the full alphabet lacks any).
    for token in sorted(domain["vocab"], key=domain["vocab"].get):
        if token not in merge_results and skip_reason(token) is None:
            if limit is not None and len(new_tokens) >= limit:
                stats["skipped_surplus"] += 1
            else:
                vocab[token] = next_id + len(new_tokens)
                new_tokens.append(token)
        elif token not in merge_results:
            stats[skip_reason(token)] += 1
    for merge in domain["merges"]:
        left, right = _pair(merge)
        if left in vocab and right in vocab and not {left, right} & added_contents:
            # The domain's own merge, when the extension has both parts.
            steps = admit_pair(left, right)
        else:
            steps = admit(left + right)
        new_merges.extend(f"{a} {b}" if as_strings else [a, b] for a, b in steps)
    stats["added"] = len(new_tokens)
    stats["merges_added"] = len(new_merges)
    stats["final_pieces"] = base_count + stats["added"]
    stats["new_scripts"] = admission.new_scripts(decoded_tokens(new_tokens))
    new_spec = {**spec, "model": {**model, "vocab": vocab, "merges": [*model["merges"], *new_merges]}}
    return new_spec, stats


def check_same_segmentation(base: Tokenizer, extended: Tokenizer, texts: list[str], admission: Admission,
                            where: Path) -> int:
    """Raise CptlabError unless `extended` encodes what `admission` guarantees (cptlab.tokenizer.extend's
    `guarded_texts`) exactly like `base`; return how many whole `texts` encode differently."""
    if not texts:
        return 0
    guarded = guarded_texts(texts, admission, escaped_space=False)
    before = base.encode_batch(guarded, add_special_tokens=False)
    after = extended.encode_batch(guarded, add_special_tokens=False)
    for run, old, new in zip(guarded, before, after):
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
