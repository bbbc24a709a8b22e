from typing import Any, List, Optional, Tuple

import numpy as np
from numpy.typing import NDArray

__version__: str

def get_num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...
def default_num_threads() -> int: ...
def simd_path() -> str: ...
def set_simd_path(name: str) -> None: ...
def available_simd_paths() -> List[str]: ...
def best_simd_path() -> str: ...
def simd_path_features(name: str) -> List[str]: ...
def gather(
    table: Any,
    ids: Any,
    out: Optional[NDArray[Any]] = ...,
    bounds: str = ...,
    dtype: Optional[str] = ...,
    table_format: Optional[str] = ...,
) -> Any: ...
def gather_bags(
    table: Any,
    ids: Any,
    offsets: Any = ...,
    mode: str = ...,
    weights: Any = ...,
    out: Optional[NDArray[Any]] = ...,
    return_argmax: bool = ...,
    bounds: str = ...,
    dtype: Optional[str] = ...,
    table_format: Optional[str] = ...,
) -> Any: ...
def scatter_add(target: NDArray[Any], ids: Any, values: Any) -> None: ...
def coalesce(ids: Any, values: Any) -> Tuple[NDArray[Any], NDArray[Any]]: ...
def bags_grad(
    grad_out: Any,
    ids: Any,
    offsets: Any = ...,
    mode: str = ...,
    weights: Any = ...,
    argmax: Any = ...,
    num_rows: int = ...,
) -> Tuple[NDArray[Any], NDArray[Any]]: ...
def optim_step(
    kind: str,
    table: NDArray[Any],
    state1: Optional[NDArray[Any]],
    state2: Optional[NDArray[Any]],
    ids: Any,
    grads: Any,
    lr: float,
    eps: float = ...,
    beta1: float = ...,
    beta2: float = ...,
    weight_decay: float = ...,
) -> None: ...
def optim_step_bags(
    kind: str,
    table: NDArray[Any],
    state1: Optional[NDArray[Any]],
    state2: Optional[NDArray[Any]],
    grad_out: Any,
    ids: Any,
    offsets: Any = ...,
    mode: str = ...,
    weights: Any = ...,
    argmax: Any = ...,
    lr: float = ...,
    eps: float = ...,
    beta1: float = ...,
    beta2: float = ...,
    weight_decay: float = ...,
) -> None: ...
def murmur3_32(keys: Any, seed: int = ...) -> NDArray[np.uint32]: ...
def murmur3_128(keys: Any, seed: int = ...) -> NDArray[np.uint64]: ...
def hash_buckets(keys: Any, num_buckets: int, seed: int = ...) -> NDArray[np.int64]: ...
def feature_hash(tokens: Any, n_features: int, alternate_sign: bool, documents: bool) -> Tuple[NDArray[Any], ...]: ...
def fasttext_hash(strings: Any) -> NDArray[np.uint32]: ...
def subword_ngrams(
    words: Any, minn: int, maxn: int, bucket: int, offset: int
) -> Tuple[NDArray[np.int64], NDArray[np.int64]]: ...
def to_bfloat16_bits(x: NDArray[np.float32], out: NDArray[np.uint16]) -> NDArray[np.uint16]: ...
def quantize_rows_8bit(table: NDArray[np.float32], codes: NDArray[np.uint8], params: NDArray[np.float32]) -> None: ...
