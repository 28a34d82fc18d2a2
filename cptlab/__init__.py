"""cptlab: continued pre-training of language models, with forgetting measured."""

__version__ = "0.1.0"
