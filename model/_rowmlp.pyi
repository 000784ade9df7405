"""Types of the C extension model/_rowmlp.c (see its source for the layout)."""

import numpy as np

MAX_WIDTH: int   # the most inputs, and units of a layer (all members), that mean computes

def mean(packed: np.ndarray, dims: tuple[int, ...], row: list[float], /) -> float: ...
