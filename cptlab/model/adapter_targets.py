"""adapter.target_modules against a model's modules, peft's way: the check of cptlab.model.adapter, in a module that
imports neither torch nor peft (cptlab.run.validate runs it on a weightless copy before any heavy work)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cptlab.errors import CptlabError

if TYPE_CHECKING:
    import torch

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _matches(module_name: str, target: str) -> bool:
    # peft's rule for a list of names: the full module name or its last dotted components.
    return module_name == target or module_name.endswith("." + target)


def check_targets(model: torch.nn.Module, targets: list[str]) -> None:
    names = [n for n, _ in model.named_modules()]
    for target in targets:
        if not any(_matches(n, target) for n in names):
            import torch  # loaded already: `model` is a torch module

            leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                             if isinstance(m, torch.nn.Linear) and ".layers." in f".{n}"})
            raise CptlabError(f"adapter.target_modules: {target!r} matches no module of the model "
                              f"(linear layers of its blocks: {', '.join(leaves) or 'none'})")
