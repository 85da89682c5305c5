"""Units and fixed numbers every floor shares, and the one way to read and write a MESH amount.

- :data:`TOKEN`: wei in one MESH (MESH has 18 decimals, like ether, so also wei in one ETH).
- :data:`BPS`: basis points in one whole (rates and shares on chain are in basis points).
- :data:`DEV_CHAIN_ID`: the development chain's id (anvil's default), the only chain where dev
  keys, the test-only cheater and free dev ETH are allowed.
- :func:`parse_mesh`: ``"12.5"`` MESH -> wei, a clear :class:`~meshcompute.errors.BadInput`
  naming what was wrong otherwise; :func:`format_mesh`: wei -> the exact decimal.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from meshcompute.errors import BadInput

TOKEN = 10**18
BPS = 10_000
DEV_CHAIN_ID = 31337


def parse_mesh(value: str | float | Decimal, *, what: str = "amount",
               allow_zero: bool = False) -> int:
    """A decimal number of MESH (``"12.5"``, ``"1_000"``, ``Decimal("0.5")``) in wei.

    Positive (or zero with ``allow_zero``) with at most 18 decimals; anything else is
    :class:`BadInput` naming ``what``.
    """
    try:
        amount = Decimal(str(value).strip().replace("_", ""))
    except (InvalidOperation, ValueError):
        raise BadInput(f"{what} must be a number of MESH such as 12.5, got {value!r}") from None
    if not amount.is_finite() or amount < 0 or (amount == 0 and not allow_zero):
        least = "zero or more" if allow_zero else "a positive number of"
        raise BadInput(f"{what} must be {least} MESH, got {value!r}")
    wei = amount * TOKEN
    if wei != wei.to_integral_value():
        raise BadInput(f"{what} has more than the 18 decimals MESH has: {value!r}")
    return int(wei)


def format_mesh(wei: int) -> str:
    """Wei as an exact MESH decimal string: 12500000000000000000 -> ``"12.5"``."""
    sign = "-" if wei < 0 else ""
    whole, frac = divmod(abs(int(wei)), TOKEN)
    text = f"{whole}.{frac:018d}".rstrip("0").rstrip(".")
    return sign + text
