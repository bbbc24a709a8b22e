"""embtab: fast, exact embedding tables for Python.

C++ kernels (multithreaded, with the SIMD path chosen at run time) behind a small numpy API:
row lookups and pooled bag lookups.
"""

from __future__ import annotations

import os as _os

from . import _core
from ._lookup import gather, gather_bags
from ._lowp import BFloat16Table, QuantizedTable, quantize_rows, to_bfloat16
from ._runtime import available_simd_paths, get_num_threads, set_num_threads, set_simd_path, simd_path

__version__: str = _core.__version__

# EMBTAB_SIMD=scalar|avx2|avx512 forces a path; asking for one this CPU cannot run is an error.
if _os.environ.get("EMBTAB_SIMD"):
    set_simd_path(_os.environ["EMBTAB_SIMD"])

__all__ = [
    "__version__",
    "BFloat16Table",
    "QuantizedTable",
    "available_simd_paths",
    "gather",
    "gather_bags",
    "get_num_threads",
    "quantize_rows",
    "set_num_threads",
    "set_simd_path",
    "simd_path",
    "to_bfloat16",
]
