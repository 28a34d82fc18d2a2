"""The data pipeline: sources -> documents -> held-out split -> per-domain token caches -> the mixture sampler."""

import importlib

# Exported lazily so that `from cptlab.data.sources import ...` (e.g. tokenizer training) does not import torch.
_EXPORTS = {
    "read_documents": "cptlab.data.sources",
    "read_documents_with_stats": "cptlab.data.sources",
    "iter_documents": "cptlab.data.sources",
    "demo_documents": "cptlab.data.demo",
    "split_documents": "cptlab.data.split",
    "DomainSpec": "cptlab.data.tokens",
    "DomainTokens": "cptlab.data.tokens",
    "load_domain_documents": "cptlab.data.tokens",
    "prepare_domain": "cptlab.data.tokens",
    "prepare_shards": "cptlab.data.tokens",
    "train_documents": "cptlab.data.tokens",
    "MixtureSampler": "cptlab.data.mixture",
    "eval_blocks": "cptlab.data.mixture",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cptlab.data' has no attribute {name!r}")
