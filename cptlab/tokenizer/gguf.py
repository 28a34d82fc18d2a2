"""A GGUF file's tokenizer (llama.cpp's `tokenizer.ggml.*` keys) rebuilt as a tokenizer cptlab can extend, so a user
with only a GGUF (a model, or one of llama.cpp's vocab-only files) can extend its vocabulary:

- SentencePiece-style vocabularies (`tokenizer.ggml.model` = llama: LLaMA-2, Phi-3, Baichuan; t5: unigram;
  gemma4: BPE given as merges) become a SentencePiece `tokenizer.model` (pieces, scores and types as stored,
  llama's normaliser) plus its verified Hugging Face export;
- byte-level BPE vocabularies (gpt2: GPT-2, LLaMA-3, Qwen2, StarCoder, DeepSeek, Falcon, ...) become a
  `tokenizer.json` with the merges and the pre-tokenizer regexes llama.cpp uses for `tokenizer.ggml.pre`;
- WordPiece (bert) and other vocabularies are refused in one line: they cannot be extended.

The metadata is parsed here rather than through `gguf.GGUFReader`, which builds numpy views of every array element
up front: 50 s for Gemma's 262k tokens and 515k merges, against 1.4 s for this reader, which also stops before the
tensor section (a multi-GB model file is never read beyond its header).
"""

from __future__ import annotations

import functools
import hashlib
import json
import mmap
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cptlab.errors import CptlabError

SUFFIX = ".gguf"
MAGIC = b"GGUF"
# GGUF value types (the spec's numbering; gguf.GGUFValueType): fixed-size ones as struct codes.
_FIXED = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
# Bump when the rebuild changes what a rebuilt tokenizer directory holds.
REBUILD_VERSION = 1

# llama.cpp's token types, which are SentencePiece's piece types.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# tokenizer.ggml.model -> SentencePiece model type (trainer_spec.model_type: 1 unigram, 2 bpe).
SPM_MODELS = {"llama": 2, "gemma4": 2, "t5": 1}
BPE_MODELS = ("gpt2",)

# The GPT-2 split (what a ByteLevel pre-tokenizer with use_regex=True applies).
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN35 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
           r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_CJK = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
_DEEPSEEK_LLM_LETTERS = (  # llama.cpp's literal character ranges, escaped
    "\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af"
    "\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5"
    "\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-"
    "\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d"
    "\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-"
    "\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113"
    "\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149"
    "\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b"
    "\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-"
    "\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0"
    "-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+"
)
_DEEPSEEK_LLM_PUNCT = "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+"


@dataclass(frozen=True)
class PreTokenizer:
    """llama.cpp's word splitting for a `tokenizer.ggml.pre` (src/llama-vocab.cpp): regexes applied one after the
    other, each splitting the pieces of the one before (a tokenizers Sequence of isolating Splits), then BPE on
    each word; `ignore_merges` takes a word that is a token whole (LLaMA-3)."""

    regexes: tuple[str, ...]
    ignore_merges: bool = False


_GPT2_PRE = PreTokenizer((GPT2,))
_STARCODER_PRE = PreTokenizer((r"\p{N}", GPT2))
PRE_TOKENIZERS = {
    # A GGUF without tokenizer.ggml.pre (or "default") gets GPT-2's split, as a Hugging Face ByteLevel BPE and
    # transformers' GGUF loader use (llama.cpp falls back to a split of its own and warns).
    "default": _GPT2_PRE,
    "gpt-2": _GPT2_PRE, "phi-2": _GPT2_PRE, "mpt": _GPT2_PRE, "olmo": _GPT2_PRE, "jais": _GPT2_PRE,
    "roberta-bpe": _GPT2_PRE,
    "llama3": PreTokenizer((_LLAMA3,), True), "llama-v3": PreTokenizer((_LLAMA3,), True),
    "llama-bpe": PreTokenizer((_LLAMA3,), True), "falcon3": PreTokenizer((_LLAMA3,), True),
    "dbrx": PreTokenizer((_LLAMA3,)), "smaug-bpe": PreTokenizer((_LLAMA3,)), "chatglm-bpe": PreTokenizer((_LLAMA3,)),
    "qwen2": PreTokenizer((_QWEN2,)), "stablelm2": PreTokenizer((_QWEN2,)), "deepseek-r1-qwen": PreTokenizer((_QWEN2,)),
    "qwen35": PreTokenizer((_QWEN35,)),
    "starcoder": _STARCODER_PRE, "refact": _STARCODER_PRE, "command-r": _STARCODER_PRE, "smollm": _STARCODER_PRE,
    "codeshell": _STARCODER_PRE, "exaone": _STARCODER_PRE,
    "falcon": PreTokenizer((r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]")),
    "deepseek-coder": PreTokenizer(("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK, r"\p{N}")),
    "deepseek-llm": PreTokenizer(("[\r\n]", _DEEPSEEK_LLM_LETTERS, _DEEPSEEK_LLM_PUNCT, r"\s+$", _CJK,
                                  r"\p{N}+")),
}  # fmt: skip


@dataclass
class GgufVocab:
    """The tokenizer keys of one GGUF file."""

    path: Path
    model: str
    pre: str | None
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] | None = None
    special: dict[str, int] = field(default_factory=dict)  # bos / eos / unk / pad -> id
    add_space_prefix: bool | None = None
    remove_extra_whitespaces: bool | None = None
    precompiled_charsmap: bytes | None = None
    digest: str = ""  # sha256 of the metadata section: the vocabulary's identity, whatever the tensors

    @property
    def kind(self) -> str:
        """How the vocabulary is rebuilt: "spm" (a SentencePiece model) or "bpe" (a byte-level tokenizer.json)."""
        if self.model in SPM_MODELS:
            return "spm"
        if self.model in BPE_MODELS:
            return "bpe"
        what = "a WordPiece (bert)" if self.model == "bert" else f"a {self.model!r}"
        raise CptlabError(
            f"{self.path}: tokenizer.ggml.model={self.model} is {what} vocabulary, which cannot be extended; cptlab "
            "extends SentencePiece (llama, t5, gemma4) and byte-level BPE (gpt2) vocabularies"
        )


def is_gguf(source: str | Path) -> bool:
    return Path(source).suffix.lower() == SUFFIX


def read_metadata(path: str | Path) -> tuple[dict, str]:
    """(every key of the GGUF header's metadata -> its value, sha256 of that section); one line naming the file if
    it is not a readable GGUF. Arrays of numbers come back as lists, of strings as lists of str."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            if path.stat().st_size < 24:
                raise ValueError("shorter than a GGUF header")
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return _parse(data)
    except OSError as err:
        raise CptlabError(f"cannot read GGUF file {path}: {err.strerror or err}") from err
    except (ValueError, struct.error, UnicodeDecodeError, OverflowError, MemoryError) as err:
        raise CptlabError(f"{path} is not a readable GGUF file (truncated or corrupt?): {err}") from err


def _parse(data) -> tuple[dict, str]:
    if data[:4] != MAGIC:
        raise ValueError(f"it starts with {bytes(data[:4])!r}, not {MAGIC!r}")
    order = "<"
    (version,) = struct.unpack_from("<I", data, 4)
    if version > 0xFFFF:  # written on a big-endian machine
        order = ">"
        (version,) = struct.unpack_from(">I", data, 4)
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} is not supported (2 or 3)")
    _, kv_count = struct.unpack_from(order + "QQ", data, 8)
    pos, size = 24, len(data)

    def take(count: int) -> int:
        nonlocal pos
        start = pos
        pos += count
        if pos > size:
            raise ValueError(f"it ends at byte {size}, inside its metadata (truncated)")
        return start

    def number(code: str):
        return struct.unpack_from(order + code, data, take(struct.calcsize(code)))[0]

    def string() -> str:
        length = number("Q")
        start = take(length)
        return data[start:start + length].decode("utf-8")

    def value(kind: int):
        if kind in _FIXED:
            return number(_FIXED[kind])
        if kind == _STRING:
            return string()
        if kind != _ARRAY:
            raise ValueError(f"unknown value type {kind} at byte {pos}")
        item, count = number("I"), number("Q")
        if item in _FIXED:
            width = struct.calcsize(_FIXED[item])
            start = take(width * count)
            return list(struct.unpack_from(f"{order}{count}{_FIXED[item]}", data, start))
        if item == _STRING:
            return [string() for _ in range(count)]
        return [value(item) for _ in range(count)]

    fields = {}
    for _ in range(kv_count):
        key = string()
        fields[key] = value(number("I"))
    return fields, hashlib.sha256(data[:pos]).hexdigest()


def read_vocab(path: str | Path) -> GgufVocab:
    """The tokenizer of the GGUF file `path`; one line naming the file and key if it has none or a malformed one."""
    path = Path(path)
    fields, digest = read_metadata(path)
    model = fields.get("tokenizer.ggml.model")
    tokens = fields.get("tokenizer.ggml.tokens")
    if not isinstance(model, str) or not isinstance(tokens, list) or not tokens:
        raise CptlabError(f"{path} holds no tokenizer (no tokenizer.ggml.model / tokenizer.ggml.tokens)")
    types = fields.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    scores = fields.get("tokenizer.ggml.scores")
    for key, values in (("token_type", types), ("scores", scores)):
        if values is not None and len(values) != len(tokens):
            raise CptlabError(f"{path}: tokenizer.ggml.{key} has {len(values)} entries for {len(tokens)} tokens")
    special = {}
    for name, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("unk", "unknown_token_id"),
                      ("pad", "padding_token_id")):  # fmt: skip
        index = fields.get(f"tokenizer.ggml.{key}")
        if isinstance(index, int) and 0 <= index < len(tokens):
            special[name] = index
    charsmap = fields.get("tokenizer.ggml.precompiled_charsmap")
    return GgufVocab(
        path=path, model=model, pre=fields.get("tokenizer.ggml.pre"), tokens=tokens, types=list(types),
        scores=scores, merges=fields.get("tokenizer.ggml.merges"), special=special,
        add_space_prefix=fields.get("tokenizer.ggml.add_space_prefix"),
        remove_extra_whitespaces=fields.get("tokenizer.ggml.remove_extra_whitespaces"),
        precompiled_charsmap=bytes(charsmap) if charsmap else None, digest=digest,
    )  # fmt: skip


def spm_proto(vocab: GgufVocab):
    """The SentencePiece ModelProto of a SentencePiece-style vocabulary: its pieces, scores and types by id, a
    byte fallback if it has <0xXX> byte pieces, and llama.cpp's normaliser for it (identity, whitespace
    escaped as "▁", a dummy prefix per tokenizer.ggml.add_space_prefix)."""
    from sentencepiece import sentencepiece_model_pb2 as spm_pb2

    model_type = SPM_MODELS[vocab.model]
    unk = vocab.special.get("unk")
    if unk is None:
        unk = next((i for i, t in enumerate(vocab.types) if t == UNKNOWN), None)
    if unk is None:
        raise CptlabError(f"{vocab.path}: a SentencePiece vocabulary needs an unknown token "
                          "(tokenizer.ggml.unknown_token_id), and this one has none")
    scores = vocab.scores
    types = list(vocab.types)
    if vocab.merges is not None and model_type == 2 and (scores is None or len(set(scores)) == 1):
        scores, types = _scores_from_merges(vocab, types)
    dummy_prefix = bool(vocab.add_space_prefix if vocab.add_space_prefix is not None
                        else vocab.model == "llama")  # llama.cpp's default per model
    proto = spm_pb2.ModelProto()
    for index, (token, kind) in enumerate(zip(vocab.tokens, types)):
        if index == unk:
            kind = UNKNOWN
        elif kind == UNKNOWN or kind not in (NORMAL, CONTROL, USER_DEFINED, UNUSED, BYTE):
            # SentencePiece allows one unknown piece; llama.cpp marks padding ids unknown too (Phi-3's [PAD...]).
            kind = UNUSED if kind == UNKNOWN else NORMAL
        elif kind == USER_DEFINED and dummy_prefix:
            # A Hugging Face export cannot match user-defined pieces behind a dummy prefix as SentencePiece does
            # (cptlab.tokenizer.hf), so they stay control pieces, as in the SentencePiece model they came from
            # (Phi-3's "</s>", an added token of its HF tokenizer): a literal "</s>" in text is spelled out.
            kind = CONTROL
        score = float(scores[index]) if scores is not None else 0.0
        proto.pieces.append(spm_pb2.ModelProto.SentencePiece(piece=token, score=score, type=kind))
    spec = proto.trainer_spec
    spec.model_type = model_type
    spec.vocab_size = len(vocab.tokens)
    spec.byte_fallback = any(kind == BYTE for kind in types)
    spec.unk_id = unk
    for name in ("bos", "eos", "pad"):
        setattr(spec, f"{name}_id", vocab.special.get(name, -1))
    for name, index in (("unk", unk), *((n, vocab.special.get(n)) for n in ("bos", "eos", "pad"))):
        if index is not None:
            setattr(spec, f"{name}_piece", vocab.tokens[index])
    norm = proto.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = dummy_prefix
    norm.remove_extra_whitespaces = bool(vocab.remove_extra_whitespaces)
    norm.escape_whitespaces = True
    if vocab.precompiled_charsmap:
        norm.name = "precompiled"
        norm.precompiled_charsmap = vocab.precompiled_charsmap
    return proto


def _scores_from_merges(vocab: GgufVocab, types: list[int]) -> tuple[list[float], list[int]]:
    """Piece scores for a SentencePiece-style BPE given as merges (gemma4): a piece ranks as the first merge that
    makes it. A multi-character piece no merge makes can never form, so it becomes unused."""
    rank: dict[str, int] = {}
    for index, merge in enumerate(vocab.merges or []):
        left, right = split_merge(vocab, merge)
        rank.setdefault(left + right, index)
    scores, types = [], list(types)
    for index, token in enumerate(vocab.tokens):
        if token in rank:
            scores.append(-float(rank[token]))
        else:
            scores.append(0.0)
            if types[index] == NORMAL and len(token) > 1:
                types[index] = UNUSED
    return scores, types


def split_merge(vocab: GgufVocab, merge: str) -> tuple[str, str]:
    """A merge "left right" as llama.cpp reads it: cut at the first space after the first character."""
    cut = merge.find(" ", 1)
    if cut < 0:
        raise CptlabError(f"{vocab.path}: tokenizer.ggml.merges holds {merge!r}, not two tokens")
    return merge[:cut], merge[cut + 1:]


def bpe_tokenizer(vocab: GgufVocab):
    """The `tokenizers` byte-level BPE of a gpt2-type vocabulary: its tokens by id, its merges by rank, llama.cpp's
    split for tokenizer.ggml.pre, ByteLevel bytes-to-characters; control tokens special, user-defined ones
    matched whole."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    pre_name = vocab.pre or "default"
    pre = PRE_TOKENIZERS.get(pre_name)
    if pre is None:
        raise CptlabError(
            f"{vocab.path}: tokenizer.ggml.pre={pre_name} is not a pre-tokenizer cptlab knows "
            f"(known: {', '.join(sorted(PRE_TOKENIZERS))})"
        )
    ids: dict[str, int] = {}
    for index, token in enumerate(vocab.tokens):
        if ids.setdefault(token, index) != index:
            raise CptlabError(f"{vocab.path}: token {token!r} appears twice (ids {ids[token]} and {index})")
    if not vocab.merges:
        raise CptlabError(f"{vocab.path}: a gpt2-type vocabulary needs tokenizer.ggml.merges, and this one has none")
    merges = [split_merge(vocab, merge) for merge in vocab.merges]
    tokenizer = Tokenizer(BPE(vocab=ids, merges=merges, dropout=None, fuse_unk=False, byte_fallback=False,
                              ignore_merges=pre.ignore_merges))  # fmt: skip
    if pre.regexes == (GPT2,):
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        splits = [pre_tokenizers.Split(Regex(regex), behavior="isolated") for regex in pre.regexes]
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
    tokenizer.decoder = decoders.ByteLevel()
    added = [AddedToken(token, special=kind == CONTROL, normalized=False)
             for token, kind in zip(vocab.tokens, vocab.types) if kind in (CONTROL, USER_DEFINED)]  # fmt: skip
    tokenizer.add_tokens([t for t in added if not t.special])
    tokenizer.add_special_tokens([t for t in added if t.special])
    return tokenizer


def rebuild(path: str | Path, out_dir: str | Path) -> str:
    """Write the GGUF's tokenizer into `out_dir` as a tokenizer directory cptlab can extend and return its kind:
    "spm" (tokenizer.model and its verified HF export) or "bpe" (tokenizer.json and tokenizer_config.json)."""
    from transformers import PreTrainedTokenizerFast

    from cptlab.tokenizer.hf import export_hf_tokenizer
    from cptlab.tokenizer.spm import MODEL_FILE
    from cptlab.utils.io import atomic_write_bytes, atomic_write_json

    vocab, out_dir = read_vocab(path), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if vocab.kind == "spm":
        model = out_dir / MODEL_FILE
        atomic_write_bytes(model, spm_proto(vocab).SerializeToString())
        export_hf_tokenizer(model, out_dir)
        return "spm"
    if "eos" not in vocab.special:
        raise CptlabError(f"{vocab.path} has no end-of-sequence token (tokenizer.ggml.eos_token_id); cptlab needs one")
    names = {name: vocab.tokens[index] for name, index in vocab.special.items()}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe_tokenizer(vocab), bos_token=names.get("bos"), eos_token=names["eos"],
        unk_token=names.get("unk"), pad_token=names.get("pad"), clean_up_tokenization_spaces=False,
    )  # fmt: skip
    tokenizer.save_pretrained(str(out_dir))
    config = out_dir / "tokenizer_config.json"
    atomic_write_json(config, {**json.loads(config.read_text()), "tokenizer_class": "PreTrainedTokenizerFast"})
    return "bpe"


def tokenizer_dir(path: str | Path, cache_root: str | Path | None = None) -> Path:
    """The rebuilt tokenizer directory of the GGUF `path`: built once into `cache_root/tokenizers/gguf-<key>`,
    keyed by the file's metadata (its vocabulary, not its weights), or without a cache into a directory that
    lives as long as the process (the `cptlab-tokenizer` command)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CptlabError(f"GGUF file {path} does not exist")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, str(cache_root) if cache_root is not None else None)
    found = _tokenizer_dir(*key)
    if not found.is_dir():  # removed since (a cache cleared while the process runs): build it again
        _tokenizer_dir.cache_clear()
        found = _tokenizer_dir(*key)
    return found


@functools.lru_cache(maxsize=8)
def _tokenizer_dir(path: str, size: int, mtime_ns: int, cache_root: str | None) -> Path:
    from cptlab.utils.hashing import hash_obj
    from cptlab.utils.io import build_once

    _, digest = read_metadata(path)
    key = hash_obj({"version": REBUILD_VERSION, "metadata_sha256": digest})
    if cache_root is None:
        holder = tempfile.TemporaryDirectory(prefix="cptlab-gguf-vocab-")
        _PROCESS_DIRS.append(holder)  # removed when the process ends
        out = Path(holder.name) / f"gguf-{key}"
        rebuild(path, out)
        return out
    return build_once(Path(cache_root) / "tokenizers" / f"gguf-{key}", lambda tmp: rebuild(path, tmp))


_PROCESS_DIRS: list[tempfile.TemporaryDirectory] = []
