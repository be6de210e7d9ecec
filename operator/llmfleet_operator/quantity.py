"""Kubernetes resource quantities as numbers, to compare what we send with what the API
server returns: it rewrites ``1.5Gi`` as ``1536Mi``, ``1000m`` as ``1`` and ``2`` (a number)
as ``"2"``, and a string comparison would re-apply the fleet on every reconcile."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_SUFFIXES = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}
# apimachinery's grammar: a signed decimal, then a binary or decimal SI suffix or an exponent.
_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))((?:[KMGTPE]i)|[numkMGTPE]|[eE][+-]?\d+)?$")


def parse_quantity(value: object) -> Decimal | None:
    """The quantity's value, or ``None`` when ``value`` is not a quantity."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return Decimal(str(value))
    if not isinstance(value, str):
        return None
    match = _QUANTITY.match(value.strip())
    if match is None:
        return None
    number, suffix = match.group(1), match.group(2) or ""
    try:
        if suffix[:1] in ("e", "E"):
            return Decimal(number) * (Decimal(10) ** int(suffix[1:]))
        return Decimal(number) * _SUFFIXES[suffix]
    except (InvalidOperation, KeyError):
        return None


def same_quantity(a: object, b: object) -> bool:
    """Whether ``a`` and ``b`` are quantities of the same value (``1.5Gi`` and ``1536Mi``)."""
    x, y = parse_quantity(a), parse_quantity(b)
    return x is not None and y is not None and x == y
