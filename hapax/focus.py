"""A cost report in FinOps FOCUS column names: one row per group and UTC day, its values typed.

``focus_csv`` and ``focus_parquet`` write these rows: CSV is what Power BI, Tableau and the cloud
cost tools import, with nothing beyond the standard library; Parquet keeps the types, for pandas,
pyarrow and other Parquet readers.

The column names and values follow the FOCUS specification, https://focus.finops.org/focus-specification/
(v1.2 there; read in its source, github.com/FinOps-Open-Cost-and-Usage-Spec/FOCUS_Spec, under specification/):
datasets/cost_and_usage/columns/*.md for each column; attributes/column_handling.md and
custom_column_handling.md for the ``x_`` prefix of custom columns and the order (FOCUS columns,
then custom ones, each alphabetical); datetime_format.md for ``YYYY-MM-DDTHH:mm:ssZ`` (CSV's text; a
UTC timestamp in Parquet); unit_format.md for ``Tokens``, its recommended count-based unit.
ProviderName was deprecated in FOCUS 1.3 for ServiceProviderName: both are written, with the
same value, for readers of either version. The file uses FOCUS's names for what the ledger
knows; it is not a complete FOCUS dataset (no billing account or billing period columns).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from hapax.ledger_report import NO_VALUE, Report, Totals

SERVICE_NAME = "Hapax LLM gateway"
MIXED = "(mixed)"  # the provider of a group whose requests went to several
# Each column's value type; a group key's custom column (x_<key>) is text.
TYPES: dict[str, type] = {
    "BilledCost": float, "BillingCurrency": str, "ChargeCategory": str, "ChargePeriodEnd": datetime,
    "ChargePeriodStart": datetime, "ConsumedQuantity": int, "ConsumedUnit": str, "EffectiveCost": float,
    "ProviderName": str, "ServiceName": str, "ServiceProviderName": str,
    "x_input_tokens": int, "x_output_tokens": int, "x_requests": int,
}
MEASURE_COLUMNS = ("x_input_tokens", "x_output_tokens", "x_requests")
FOCUS_COLUMNS = tuple(name for name in TYPES if name not in MEASURE_COLUMNS)
COST_DECIMALS = 10  # a token can cost less than a micro-dollar

Row = dict[str, str | int | float | datetime]


class ColumnClash(ValueError):
    """A group key whose custom column would be one of the measures' (``--by requests``)."""


def columns(by: tuple[str, ...]) -> list[str]:
    keys = [f"x_{key}" for key in by]
    clash = set(keys) & set(MEASURE_COLUMNS)
    if clash:
        raise ColumnClash(f"cannot group by {', '.join(sorted(c[2:] for c in clash))} in a FOCUS file: "
                          f"the column {', '.join(sorted(clash))} holds a measure")
    return [*FOCUS_COLUMNS, *sorted([*keys, *MEASURE_COLUMNS])]


def column_type(name: str) -> type:
    return TYPES.get(name, str)


def rows(report: Report) -> list[Row]:
    """A row per group and day, by day then group."""
    return [{**_focus(day, totals), **{f"x_{key}": value for key, value in zip(report.by, group, strict=True)},
             "x_requests": totals.requests, "x_input_tokens": totals.input_tokens,
             "x_output_tokens": totals.output_tokens}
            for (group, day), totals in sorted(report.days.items(), key=lambda item: (item[0][1], item[0][0]))]


def _focus(day: date, totals: Totals) -> Row:
    # Rounded as CSV writes it, so that both files hold the same number.
    cost = round(totals.cost_usd, COST_DECIMALS)
    provider = MIXED if len(totals.providers) > 1 else next(iter(totals.providers), NO_VALUE)
    return {"BilledCost": cost, "EffectiveCost": cost, "BillingCurrency": "USD", "ChargeCategory": "Usage",
            "ChargePeriodStart": _midnight(day), "ChargePeriodEnd": _midnight(day + timedelta(days=1)),
            "ConsumedQuantity": totals.input_tokens + totals.output_tokens, "ConsumedUnit": "Tokens",
            "ProviderName": provider, "ServiceProviderName": provider, "ServiceName": SERVICE_NAME}


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)
