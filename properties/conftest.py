"""Shared setup for the theorem-level properties.

The models here are tiny, so torch's intra-op thread pool only adds contention (with ``-n 2`` on two
cores it made each step ~20x slower): every worker runs single-threaded.
"""

import torch

torch.set_num_threads(1)
