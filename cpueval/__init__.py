"""cpueval: batch evaluation of transformers models on CPU across execution modes and precisions."""

import logging

# transformers imports torchao when it is installed; torchao's wheel then logs a failure to load its
# optional CUDA/other-Python kernels and torch warns about its enum registrations. Both are harmless
# on CPU and would otherwise open every run's log.
logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

__version__ = "0.1.0"
