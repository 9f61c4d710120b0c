"""Imported once by the fork server of :func:`megatron_tulu.testing.run_distributed` on a machine without CUDA, so
its rank processes start with torch and megatron-core (through the model seam) already imported: ~5 s of imports
per rank when each is spawned. Triton's interpreter mode and the import-time warning filters are set first, as
:func:`megatron_tulu.platform.setup` would set them before these imports. Nothing here runs a model or starts a
process group: every rank still calls ``platform.setup`` and builds its own state."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # read when triton is imported (megatron-core imports it)

from megatron_tulu.platform import quiet_megatron_import  # noqa: E402

quiet_megatron_import()

import megatron_tulu.models.llama  # noqa: E402,F401  (imports megatron-core)
