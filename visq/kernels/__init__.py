"""Integer kernels behind ``visq.export``: int8 GEMM with activation quantization (int8.py) and packed 4-bit weights
(int4.py). Plain functions on tensors; the exported layer classes live in ``visq.deploy``."""
