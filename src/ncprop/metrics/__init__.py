"""Neural Collapse metrics NC0-NC4 (THEORY.md section 2), in memory and streaming.

- :func:`nc_metrics`: every metric from features held in memory, batched over leading run dims.
- :func:`nc0`, :func:`nc0_alpha`, :func:`nc0_normalized`, :func:`nc2w`: from the weight alone.
- :class:`NCAccumulator`: the same metrics in two streaming passes over batches.
- :func:`collect_nc_metrics`: both passes over a model's features, returned as floats.
"""

from ncprop.metrics.functional import (
    GLOBAL_MEANS,
    METRIC_KEYS,
    NCMetricWarning,
    nc0,
    nc0_alpha,
    nc0_normalized,
    nc2w,
    nc_metrics,
)
from ncprop.metrics.streaming import NCAccumulator, collect_nc_metrics

__all__ = [
    "GLOBAL_MEANS",
    "METRIC_KEYS",
    "NCAccumulator",
    "NCMetricWarning",
    "collect_nc_metrics",
    "nc0",
    "nc0_alpha",
    "nc0_normalized",
    "nc2w",
    "nc_metrics",
]
