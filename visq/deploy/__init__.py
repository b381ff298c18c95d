"""Real integer execution of a quantized model: ``export`` swaps fake-quant layers for layer classes that run
integer kernels (w8a8.py: int8 GEMM; weight_only.py: int8 / packed int4 linear weights, int8 convolution weights),
chosen per layer (choose.py)."""
