"""What a layer builds once for a compiled kernel, kept until the tensors it was built from change."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from torch import Tensor

__all__ = ["PlanCache"]

T = TypeVar("T")


class PlanCache(Generic[T]):
    """A layer's kernel plan (a VNNI ``Plan``, a weight-only ``Grid``), or the fact that it has none,
    rebuilt when the layer's tensors or settings change.

    The check runs on every call, so it is plain attribute tests: the same four tensor objects
    (``w_q``, ``w_scale``, ``w_zero_point``, ``bias``; the last two may be None), their in-place
    version counters, the same settings tuple. Not copied with the layer (``copy``/``deepcopy``/pickle
    give an empty cache): a plan holds raw pointers into the tensors it was built from.
    """

    def __init__(self) -> None:
        self._key: tuple[object, ...] | None = None
        self._plan: T | None = None

    def get(self, w_q: Tensor, w_scale: Tensor, w_zero_point: Tensor | None, bias: Tensor | None,
            meta: tuple[object, ...], build: Callable[[], T | None]) -> T | None:
        k = self._key
        if k is not None and k[0] is w_q and k[1] is w_scale and k[2] is w_zero_point and k[3] is bias \
                and k[4] == w_q._version and k[5] == w_scale._version \
                and (w_zero_point is None or k[6] == w_zero_point._version) \
                and (bias is None or k[7] == bias._version) and k[8] == meta:
            return self._plan
        self._plan = build()
        self._key = (w_q, w_scale, w_zero_point, bias, w_q._version, w_scale._version,
                     -1 if w_zero_point is None else w_zero_point._version, -1 if bias is None else bias._version,
                     meta)
        return self._plan

    def __copy__(self) -> PlanCache[T]:
        return PlanCache()

    def __deepcopy__(self, memo: dict[int, object]) -> PlanCache[T]:
        return PlanCache()

    def __getstate__(self) -> dict[str, object]:
        return {"_key": None, "_plan": None}
