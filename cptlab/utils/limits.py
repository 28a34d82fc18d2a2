"""Limits that are both a library's default and a config field's default, written once: torch-free and importing
nothing of cptlab, so the config schema and the libraries below it both read them from here."""

from __future__ import annotations

# The largest document a source may hold in UTF-8 bytes: data.max_doc_bytes's default and the reader's
# (cptlab.data.sources). A file without line breaks would otherwise be read, split, hashed and tokenized as one
# document, for minutes and gigabytes, before anything failed.
MAX_DOC_BYTES: int = 8 << 20
