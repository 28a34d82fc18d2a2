"""New entries of a `dict[str, Schema]` node (a domain of data.domains) added from the command line.

Why Hydra alone refuses them: it applies `+data.domains.code={role: replay, sources: [demo:code]}` (and `++`) as
`OmegaConf.update(cfg, key, value, merge=True, force_add=True)`, which merges only into a node that exists. For a
new key OmegaConf *assigns* the plain dict, wrapping it in a node typed with the dict's element type
(DomainConfig), and OmegaConf never assigns a dict to a structured-config-typed node, it only merges one into it:
"Invalid type assigned: dict is not a subclass of DomainConfig". `+data.domains.code.role=replay` fails the same
way on its way down (the missing `code` is assigned an empty dict first). A config file adding a domain (an
experiment's `data.domains.en_eval`) works because files are merged.

`install()` wraps Hydra's application of command-line overrides (every Hydra entry point: a run, each job of a
`-m` sweep, the compose API): an add (`+`) or force-add (`++`) whose key names a new entry of such a node, or a key
below one, is applied as a merge of `{name: value}` (nested for a deeper key) into the node, exactly what a config
file adding the entry does: the entry is built from its schema (defaults, types, unknown keys refused), then the
value is merged onto it. Every other override goes to Hydra unchanged and in order, so
`+data.domains.code.role=replay +data.domains.code.sources=[demo:code]` builds one entry. Removing
(`~data.domains.en`) and changing existing entries (`data.domains.en.weight=2`) never needed this.
"""

from __future__ import annotations

import sys

from omegaconf import DictConfig, flag_override
from omegaconf._utils import is_structured_config
from omegaconf.errors import OmegaConfBaseException

_INSTALLED = "_cptlab_new_entries"


def new_entry(cfg: DictConfig, key: str) -> tuple[DictConfig, str, list[str]] | None:
    """(the dict node, the new entry's name, the keys below it) when dotted `key` names an entry that does not
    exist yet of a node typed `dict[str, Schema]`, or a key below such an entry; None for any other key."""
    if "[" in key:
        return None
    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts):
        if not isinstance(node, DictConfig) or node._is_none() or node._is_missing():
            return None
        child = node._get_node(part, validate_access=False)
        if child is None:
            element = node._metadata.element_type
            return (node, part, parts[i + 1:]) if i > 0 and is_structured_config(element) else None
        node = child
    return None


def apply_overrides(original, overrides, cfg: DictConfig) -> None:
    """Hydra's `_apply_overrides_to_config(overrides, cfg)`, with additions of new typed-dict entries merged."""
    from hydra.errors import ConfigCompositionException

    for override in overrides:
        adds = override.is_add() or override.is_force_add()
        target = new_entry(cfg, override.key_or_group) if adds and override.package is None else None
        if target is None:
            original([override], cfg)
            continue
        node, name, below = target
        value = override.value()
        for key in reversed(below):
            value = {key: value}
        try:
            with flag_override(node, "struct", False):  # as Hydra's own `+`: the entry's schema still refuses typos
                node.merge_with({name: value})
        except OmegaConfBaseException as ex:
            raise ConfigCompositionException(
                f"Error merging override {override.input_line}").with_traceback(sys.exc_info()[2]) from ex


def install() -> None:
    """Route Hydra's command-line overrides through `apply_overrides` (idempotent)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    original = ConfigLoaderImpl._apply_overrides_to_config
    if getattr(original, _INSTALLED, False):
        return

    def apply(overrides, cfg: DictConfig) -> None:
        apply_overrides(original, overrides, cfg)

    setattr(apply, _INSTALLED, True)
    ConfigLoaderImpl._apply_overrides_to_config = staticmethod(apply)

