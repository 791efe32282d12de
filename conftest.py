"""Suite-wide settings. The suite's models are tiny and xdist runs one worker per core, so torch's
intra-op thread pool only adds contention: every test process runs torch single-threaded."""

import torch

torch.set_num_threads(1)
