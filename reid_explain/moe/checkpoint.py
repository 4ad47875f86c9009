"""Save and load a trained MoSAIC-ReID model: experts in peft's format, router and ID head.

Layout of a checkpoint folder::

    experts/<expert>/adapter_model.safetensors   peft adapter weights (get_peft_model_state_dict)
    experts/<expert>/adapter_config.json         its LoraConfig
    experts/moe.json                             expert layout, targets and options
    heads.safetensors                            router.* and classifier.* weights
    heads.json                                   their configurations

Only what was trained is stored; the host's own weights are the user's (load them first, then
apply ``lora_moe`` with the same options, then :func:`load_checkpoint`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from .routers import LearnedRouter


def save_checkpoint(path: str | Path, moe: Any, router: LearnedRouter | None = None,
                    classifier: nn.Module | None = None) -> Path:
    """Write experts (peft format), router and classifier under ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    moe.save_pretrained(path / "experts")
    tensors = {}
    config: dict[str, Any] = {}
    for prefix, module in (("router", router), ("classifier", classifier)):
        if module is None:
            continue
        tensors.update({f"{prefix}.{k}": v.detach().contiguous()
                        for k, v in module.state_dict().items()})
        config[prefix] = module.config() if hasattr(module, "config") else {}
    if tensors:
        save_file(tensors, str(path / "heads.safetensors"))
    (path / "heads.json").write_text(json.dumps(config, indent=2))
    return path


def load_checkpoint(path: str | Path, moe: Any, router: LearnedRouter | None = None,
                    classifier: nn.Module | None = None) -> None:
    """Load what :func:`save_checkpoint` wrote into an applied ``lora_moe`` (and heads)."""
    from safetensors.torch import load_file

    path = Path(path)
    moe.load_pretrained(path / "experts")
    heads = path / "heads.safetensors"
    tensors = load_file(str(heads)) if heads.exists() else {}
    for prefix, module in (("router", router), ("classifier", classifier)):
        if module is None:
            continue
        state = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
        if not state:
            raise ValueError(f"{path}: no {prefix} weights saved")
        module.load_state_dict(state)
