"""Reading what training losses need from the host's own forward passes.

Auxiliary losses must not cost a second forward: while attached, forward hooks keep the last
image forward's patch tokens (in the joint space), the last text forward's token features (in
the joint space) and, if asked, the self-attention of chosen visual blocks, all still in the
autograd graph so the losses train the host through them.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..errors import AdapterError
from ..plugin_api.adapter import Adapter, AttentionCapture, HookSet

#: dense features a ``patch_block`` may name (the adapter's, less its plain ``"tokens"``)
DENSE_PATCH_FEATURES = ("value", "qq", "kk", "vv")


def _dense_choice(patch_block: int | str | None) -> tuple[str, int] | None:
    """``(features, block)`` of a dense ``patch_block`` ("kk", "value:-2"), None for a block
    index, "embed" or None; anything else is an error naming the choices."""
    if not isinstance(patch_block, str) or patch_block == "embed":
        return None
    features, _, block = patch_block.partition(":")
    try:
        index = int(block) if block else -1
    except ValueError:
        index = None
    if features not in DENSE_PATCH_FEATURES or index is None:
        raise AdapterError(f"patch_block must be a block index, 'embed' or one of "
                           f"{DENSE_PATCH_FEATURES} (optionally ':BLOCK', e.g. 'kk:-2'), got "
                           f"{patch_block!r}")
    return features, index


class ForwardCapture:
    """Hooks on a CLIP-style host keeping the latest patch tokens, text tokens, attention."""

    def __init__(self, adapter: Adapter) -> None:
        if "text" not in adapter.capabilities:
            raise AdapterError(f"adapter {adapter.name!r} has no text tower; phrase supervision "
                               "needs a CLIP-style host (open_clip)")
        self.adapter = adapter
        self.hooks = HookSet()
        self.patch_tokens: Tensor | None = None  # (B, N, D) joint space
        self.text_tokens: Tensor | None = None  # (B, L, D) joint space
        self.attention: list[Tensor] = []  # per captured block, (B, heads, 1+N, 1+N)
        self.attention_blocks: tuple[int, ...] = ()
        self.grid_size: tuple[int, int] | None = None  # patch grid of the last image forward
        self._block_patches: Tensor | None = None
        self._in_block_hook = False
        self._attention_ctx: Any = None
        self._attention_capture: AttentionCapture | None = None

    def attach(self, attention_blocks: tuple[int, ...] = (),
               patch_block: int | str | None = None) -> None:
        """``patch_block``: take the patch tokens at the output of that visual block (passed
        through ``ln_post`` and ``proj`` into the joint space) instead of the final tokens;
        ``"embed"``: the patch embeddings entering the first block (after ``ln_pre``), which
        no attention has mixed yet; ``"value"``, ``"kk"`` (or ``"kk:-2"``, any of the adapter's
        dense features and a block, default the last): the dense features of the training-free
        dense-CLIP methods, read from that block's input in this same forward (MaskCLIP's value
        embeddings, ClearCLIP's key-key attention; the adapter's ``dense_from_block_input``)."""
        model = self.adapter.model
        visual = model.visual
        if getattr(visual, "attn_pool", None) is not None:
            raise AdapterError("open_clip towers with attentional pooling are not supported "
                               "for patch-level supervision")

        def to_joint(tokens: Tensor) -> Tensor:
            patches = tokens[:, self.adapter.num_prefix_tokens:]
            return patches @ visual.proj if visual.proj is not None else patches

        def on_block(_m: nn.Module, _a: Any, out: Tensor) -> None:
            tokens = out if self.adapter.batch_first else out.transpose(0, 1)
            self._in_block_hook = True  # this ln_post call is ours, not the tower's output
            try:
                self._block_patches = to_joint(visual.ln_post(tokens))
            finally:
                self._in_block_hook = False

        def on_visual(_m: nn.Module, _a: Any, out: Tensor) -> None:
            if self._in_block_hook:
                return
            if out.dim() == 3 and out.shape[1] > 1:
                tokens = out if self.adapter.batch_first else out.transpose(0, 1)
                self.patch_tokens = to_joint(tokens) if patch_block is None \
                    else self._block_patches
                self.attention = [self._attention_capture.as_heads(t) for t in
                                  self._attention_capture.tensors] \
                    if self._attention_capture is not None else []
                if self._attention_capture is not None:
                    self._attention_capture.tensors.clear()

        def on_text(_m: nn.Module, _a: Any, out: Tensor) -> None:
            projection = getattr(model, "text_projection", None)
            if projection is None:
                self.text_tokens = out
            elif isinstance(projection, nn.Linear):
                self.text_tokens = projection(out)
            else:
                self.text_tokens = out @ projection

        def on_patchify(_m: nn.Module, _a: Any, out: Tensor) -> None:
            self.grid_size = (int(out.shape[-2]), int(out.shape[-1]))

        if getattr(visual, "final_ln_after_pool", False):
            raise AdapterError("open_clip towers with final_ln_after_pool apply ln_post to the "
                               "pooled token only; patch-level supervision needs all tokens")
        self.hooks.add(visual.conv1.register_forward_hook(on_patchify))
        dense = _dense_choice(patch_block)
        if patch_block == "embed":
            self.hooks.add(visual.ln_pre.register_forward_hook(on_block))
        elif dense is not None:
            features, block = dense
            if not hasattr(self.adapter, "dense_from_block_input"):
                raise AdapterError(f"patch_block {patch_block!r}: adapter "
                                   f"{self.adapter.name!r} has no dense features")

            def on_block_input(_m: nn.Module, args: Any) -> None:
                x = args[0] if self.adapter.batch_first else args[0].transpose(0, 1)
                self._in_block_hook = True  # its ln_post call is ours, not the tower's output
                try:
                    self._block_patches = self.adapter.dense_from_block_input(x, features,
                                                                              block)
                finally:
                    self._in_block_hook = False

            self.hooks.add(self.adapter.blocks()[block].register_forward_pre_hook(
                on_block_input))
        elif patch_block is not None:
            self.hooks.add(self.adapter.blocks()[patch_block].register_forward_hook(on_block))
        self.hooks.add(visual.ln_post.register_forward_hook(on_visual))
        self.hooks.add(model.ln_final.register_forward_hook(on_text))
        if attention_blocks:
            blocks = self.adapter.blocks()
            chosen = [blocks[i] for i in attention_blocks]
            self.attention_blocks = tuple(attention_blocks)
            self._attention_ctx = self.adapter.capture_attention(chosen)
            self._attention_capture = self._attention_ctx.__enter__()

    def detach(self) -> None:
        if self._attention_ctx is not None:
            self._attention_ctx.__exit__(None, None, None)
            self._attention_ctx = None
            self._attention_capture = None
        self.hooks.remove()
        self.clear()

    def clear(self) -> None:
        self.patch_tokens = None
        self.text_tokens = None
        self.attention = []


class OwnsCapture:
    """For training losses: use the session's shared capture, or make (and own) one when the
    loss is attached on its own. Subclasses set ``capture``/``_owns_capture`` and may override
    ``capture_options``."""

    adapter: Adapter
    capture: ForwardCapture | None
    _owns_capture: bool

    def capture_options(self) -> dict[str, Any]:
        return {}

    def _attach(self) -> None:
        if self.capture is None:
            self.capture = ForwardCapture(self.adapter)
            self.capture.attach(**self.capture_options())

    def _detach(self) -> None:
        if self._owns_capture and self.capture is not None:
            self.capture.detach()
            self.capture = None
