"""How repeated measurements spread: min, median, max (and a low-side percentile), so a summary
never reports one number for runs that differ. None-valued measurements (a run that carried no data)
are left out; no measurement at all gives None figures.
"""
from __future__ import annotations

import statistics
from collections.abc import Iterable

SPREAD = ("min", "median", "max")


def _values(values: Iterable[float | None]) -> list[float]:
    return sorted(v for v in values if v is not None)


def spread(values: Iterable[float | None]) -> dict[str, float | None]:
    """{"min", "median", "max"} of the values (None for each if there are none)."""
    xs = _values(values)
    if not xs:
        return dict.fromkeys(SPREAD)
    return {"min": xs[0], "median": statistics.median(xs), "max": xs[-1]}


def spread_keys(name: str, values: Iterable[float | None], digits: int | None = None) -> dict[str, float | None]:
    """`spread` as flat summary keys: {name_min, name_median, name_max}, rounded to `digits` if given."""
    out = {}
    for k, v in spread(values).items():
        out[f"{name}_{k}"] = round(v, digits) if digits is not None and v is not None else v
    return out


def percentile_low(values: Iterable[float | None], q: float) -> float | None:
    """The value at rank floor(q * (n - 1)) of the sorted values: a measured value, never interpolated."""
    xs = _values(values)
    return xs[int(q * (len(xs) - 1))] if xs else None


def spread_text(figures: dict, name: str = "", fmt: str = "{:.3f}") -> str:
    """"median (min-max)" of `spread` figures, or of the flat keys `spread_keys(name, ...)` made;
    "-" if nothing was measured."""
    key = (lambda k: f"{name}_{k}") if name else (lambda k: k)
    lo, mid, hi = (figures.get(key(k)) for k in SPREAD)
    if mid is None:
        return "-"
    return f"{fmt.format(mid)} ({fmt.format(lo)}-{fmt.format(hi)})"
