"""What the C loader accepts in model.bin (c/core/fpgai.h's limits), written once for Python.

The writer (model/formats/export_format.py, which names them too), the kinds' tuple rules
(model/ops/KIND.py `check`, model/ops/checks.py) and the tuple check (model/formats/tuple_check.py)
read them, so a tuple Python loads is one the C engine loads; tests/test_hostile_inputs.py compares
them with the C sources. Nothing here imports: model/ops and model/formats both sit above it.
"""
INT32_MAX = 2 ** 31 - 1
MIN_OPS, MAX_OPS = 2, 4096
MAX_DIM = 65535                                   # C, H, W, kernels, strides, paddings: below 65,536
MAX_INPUTS = 64                                   # concat's most inputs
MAX_TENSOR = 1 << 26                              # elements of one tensor
MAX_SHIFT = 62
MAX_SCRATCH = 1 << 28                             # elements of one kernel scratch buffer (im2col, padded input)
MAX_WEIGHTS = INT32_MAX                           # weights in the weight files (biases: a quarter of it)
MAX_ARENA = 1 << 30                               # bytes of all activations together (arena_bytes)
