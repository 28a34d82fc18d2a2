"""The built-in probes' `custom_dataset` functions (lm-eval imports this file by path from the task YAMLs)."""

from cptlab.evaluation.probes import dataset


def en_next_sentence(**kwargs):
    return dataset("cptlab_en_next_sentence")


def zh_polarity(**kwargs):
    return dataset("cptlab_zh_polarity")


def en_word_order(**kwargs):
    return dataset("cptlab_en_word_order")


def zh_char_order(**kwargs):
    return dataset("cptlab_zh_char_order")
