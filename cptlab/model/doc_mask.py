"""`data.doc_masking`: each document of a packed block sees only itself.

cptlab's token stream is documents each followed by EOS (no BOS), cut into `data.seq_len` blocks. With doc
masking on, the position ids restart at every EOS of a block that is not its first token, so a segment is
`[EOS, document tokens...]`: a document's first token is predicted from the EOS alone and its last token
predicts the EOS that ends it, as they would be with the document run alone as `[EOS, doc..., EOS]`. A
document's losses then do not depend on what it was packed beside (only a document the block cuts at its
start lacks its beginning).

Hugging Face models turn such position ids into the block-diagonal causal mask themselves, when they are
called with no attention mask and no cache (`transformers.masking_utils`: `_preprocess_mask_arguments` calls
`find_packed_sequence_indices`, which starts a segment wherever a position id is not the previous one plus
one, and `create_causal_mask` then ANDs causality over the remapped positions with "same segment"), for the
sdpa, eager and flex attention masks. The callers here pass `position_ids=` and `use_cache=False`; the
model types that path was verified for (tests/model/test_doc_masking.py) are allow-listed below.

torch is imported where the position ids are computed, not with the module: the config's validation checks the
model type (`check_doc_masking`) before torch loads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cptlab.errors import CptlabError

if TYPE_CHECKING:
    import torch

# Model types whose decoder builds its causal mask with `create_causal_mask` (or the sliding-window variant)
# from the position ids it is given, and feeds the same position ids to its rotary embedding: checked, each
# with a tiny random config, to give a packed block the logits of its documents run alone.
DOC_MASKING_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def document_position_ids(input_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Position ids [..., T] that restart at 0 at every `eos_id` of `input_ids` [..., T] past position 0 (a
    block's first token starts a segment whatever it is). Pure and vectorised: no host sync, any device."""
    import torch

    positions = torch.arange(input_ids.shape[-1], device=input_ids.device).expand_as(input_ids)
    starts = torch.where(input_ids == eos_id, positions, torch.zeros_like(positions))
    return positions - starts.cummax(dim=-1).values


def check_doc_masking(model_type: str | None) -> None:
    """Refuse data.doc_masking=true for a model type whose masking path was not verified (one line)."""
    if model_type not in DOC_MASKING_MODEL_TYPES:
        raise CptlabError(f"data.doc_masking=true is not supported for model type {model_type!r} (supported: "
                          f"{', '.join(DOC_MASKING_MODEL_TYPES)}): set data.doc_masking=false")
