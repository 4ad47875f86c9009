"""Integrated Gradients (Sundararajan et al. 2017) on image pixels, via Captum.

The map is the attribution summed over colour channels (signed: positive pixels raise the
similarity). The default baseline is all zeros, which for mean/std-normalised inputs is the
data set's mean image.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from reid_explain.hookspecs import hookimpl
from reid_explain.plugin_api.attribution import Attribution
from reid_explain.plugin_api.targets import Target


class IntegratedGradients(Attribution):
    """Integrated Gradients from a baseline image (default: zeros = the mean image)."""

    name = "integrated_gradients"
    needs_parameter_gradients = False
    signed = True

    def attribute(self, inputs: Tensor, target: Target, baselines: Any = None,
                  n_steps: int = 32, method: str = "gausslegendre",
                  internal_batch_size: int | None = None, absolute: bool = False,
                  **options: Any) -> Tensor:
        from captum.attr import IntegratedGradients as CaptumIG  # lazy: plugins load fast

        ig = CaptumIG(self.forward_func(target))
        attr = ig.attribute(inputs, baselines=baselines, additional_forward_args=target.args,
                            n_steps=n_steps, method=method,
                            internal_batch_size=internal_batch_size, **options)
        return (attr.abs() if absolute else attr).sum(dim=1)


@hookimpl
def register_attributions(register):
    register(IntegratedGradients)
