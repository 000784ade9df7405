"""Types of the C extension model/_rowmlp.c (see its source for the layout)."""

import numpy as np

def mean(packed: np.ndarray, dims: tuple[int, ...], row: list[float], /) -> float: ...
