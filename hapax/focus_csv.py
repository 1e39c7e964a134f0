"""A cost report as CSV in FinOps FOCUS column names: one row per group and UTC day.

CSV, not Parquet: Power BI, Tableau and the cloud cost tools import it, and it needs nothing
beyond the standard library.

The column names and values follow the FOCUS specification, https://focus.finops.org/focus-specification/
(v1.2 there; read in its source, github.com/FinOps-Open-Cost-and-Usage-Spec/FOCUS_Spec, under specification/):
datasets/cost_and_usage/columns/*.md for each column; attributes/column_handling.md and
custom_column_handling.md for the ``x_`` prefix of custom columns and the order (FOCUS columns,
then custom ones, each alphabetical); datetime_format.md for ``YYYY-MM-DDTHH:mm:ssZ``;
unit_format.md for ``Tokens``, its recommended count-based unit.
ProviderName was deprecated in FOCUS 1.3 for ServiceProviderName: both are written, with the
same value, for readers of either version. The file uses FOCUS's names for what the ledger
knows; it is not a complete FOCUS dataset (no billing account or billing period columns).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta
from typing import TextIO

from hapax.ledger_report import NO_VALUE, Report, Totals

SERVICE_NAME = "Hapax LLM gateway"
MIXED = "(mixed)"  # the provider of a group whose requests went to several
FOCUS_COLUMNS = ("BilledCost", "BillingCurrency", "ChargeCategory", "ChargePeriodEnd", "ChargePeriodStart",
                 "ConsumedQuantity", "ConsumedUnit", "EffectiveCost", "ProviderName", "ServiceName",
                 "ServiceProviderName")
MEASURE_COLUMNS = ("x_input_tokens", "x_output_tokens", "x_requests")


class ColumnClash(ValueError):
    """A group key whose custom column would be one of the measures' (``--by requests``)."""


def columns(by: tuple[str, ...]) -> list[str]:
    keys = [f"x_{key}" for key in by]
    clash = set(keys) & set(MEASURE_COLUMNS)
    if clash:
        raise ColumnClash(f"cannot group by {', '.join(sorted(c[2:] for c in clash))} in CSV: "
                          f"the column {', '.join(sorted(clash))} holds a measure")
    return [*FOCUS_COLUMNS, *sorted([*keys, *MEASURE_COLUMNS])]


def write(report: Report, out: TextIO) -> int:
    """The header, then a row per group and day, by day then group; how many rows."""
    writer = csv.DictWriter(out, fieldnames=columns(report.by), lineterminator="\n")
    writer.writeheader()
    lines = list(rows(report))
    writer.writerows(lines)
    return len(lines)


def rows(report: Report) -> Iterator[dict[str, str]]:
    for (group, day), totals in sorted(report.days.items(), key=lambda item: (item[0][1], item[0][0])):
        yield {**_focus(day, totals), **{f"x_{key}": value for key, value in zip(report.by, group, strict=True)},
               "x_requests": str(totals.requests), "x_input_tokens": str(totals.input_tokens),
               "x_output_tokens": str(totals.output_tokens)}


def _focus(day: date, totals: Totals) -> dict[str, str]:
    cost = _decimal(totals.cost_usd)
    provider = MIXED if len(totals.providers) > 1 else next(iter(totals.providers), NO_VALUE)
    return {"BilledCost": cost, "EffectiveCost": cost, "BillingCurrency": "USD", "ChargeCategory": "Usage",
            "ChargePeriodStart": _timestamp(day), "ChargePeriodEnd": _timestamp(day + timedelta(days=1)),
            "ConsumedQuantity": str(totals.input_tokens + totals.output_tokens), "ConsumedUnit": "Tokens",
            "ProviderName": provider, "ServiceProviderName": provider, "ServiceName": SERVICE_NAME}


def _timestamp(day: date) -> str:
    return f"{datetime.combine(day, time()):%Y-%m-%dT%H:%M:%S}Z"


def _decimal(value: float) -> str:
    """Dollars to ten decimals (a token can cost less than a micro-dollar), without trailing zeros."""
    return f"{value:.10f}".rstrip("0").rstrip(".")
