"""megatron-tulu's Triton kernels (not the PyPI package named ``kernels``).

Each kernel lives beside its plain-torch reference; ``MEGATRON_TULU_KERNELS = True`` lets tests assert that
this package, not a same-named one from site-packages, is the one imported.
"""

MEGATRON_TULU_KERNELS = True
