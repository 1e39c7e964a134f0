"""What tokens cost: the price table behind ``hapax_cost_usd_total``.

Prices are US dollars per million tokens, as providers publish them. The
built-in table covers common hosted models; ``pricing:`` in the config adds
models or overrides these. A model matches an entry exactly or as a dated or
tagged variant of it (``gpt-4o-2024-08-06`` and ``claude-3-5-haiku-latest``
take ``gpt-4o`` and ``claude-3-5-haiku``); the longest entry wins, so
``gpt-4o-mini`` is never priced as ``gpt-4o``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelPrice:
    input: float   # USD per million input (prompt) tokens
    output: float  # USD per million output (completion) tokens


DEFAULT_PRICES: Mapping[str, ModelPrice] = {
    "gpt-4o": ModelPrice(2.50, 10.00),
    "gpt-4o-mini": ModelPrice(0.15, 0.60),
    "gpt-4.1": ModelPrice(2.00, 8.00),
    "gpt-4.1-mini": ModelPrice(0.40, 1.60),
    "gpt-4.1-nano": ModelPrice(0.10, 0.40),
    "gpt-4-turbo": ModelPrice(10.00, 30.00),
    "gpt-4": ModelPrice(30.00, 60.00),
    "gpt-3.5-turbo": ModelPrice(0.50, 1.50),
    "o1": ModelPrice(15.00, 60.00),
    "o1-mini": ModelPrice(1.10, 4.40),
    "o3-mini": ModelPrice(1.10, 4.40),
    "text-embedding-3-small": ModelPrice(0.02, 0.0),
    "text-embedding-3-large": ModelPrice(0.13, 0.0),
    "claude-3-haiku": ModelPrice(0.25, 1.25),
    "claude-3-5-haiku": ModelPrice(0.80, 4.00),
    "claude-3-sonnet": ModelPrice(3.00, 15.00),
    "claude-3-5-sonnet": ModelPrice(3.00, 15.00),
    "claude-3-7-sonnet": ModelPrice(3.00, 15.00),
    "claude-sonnet-4": ModelPrice(3.00, 15.00),
    "claude-3-opus": ModelPrice(15.00, 75.00),
    "claude-opus-4": ModelPrice(15.00, 75.00),
}

_VARIANT_SEPARATORS = ("-", "@", ":")


def price_for(model: str, table: Mapping[str, ModelPrice]) -> ModelPrice | None:
    """The entry for ``model`` (exact, else the longest entry it is a variant of); None if unpriced."""
    if model in table:
        return table[model]
    candidates = [name for name in table
                  if model.startswith(name) and model[len(name)] in _VARIANT_SEPARATORS]
    return table[max(candidates, key=len)] if candidates else None
