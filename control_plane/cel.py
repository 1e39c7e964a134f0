"""CEL expressions for Envoy's CEL matcher, built as parsed syntax trees.

Envoy 1.40's ``CelMatcher`` does not take expression strings (``cel_expr_string``
is refused with "CEL expression not set"), so the few expressions Hapax needs
are built as ``cel.expr.ParsedExpr`` trees here: metadata values compared with
strings or known to be there, joined with ``&&``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TypeAlias

from cel.expr import syntax_pb2

Expr: TypeAlias = syntax_pb2.Expr


@dataclass(frozen=True)
class MetadataEquals:
    """``xds.<attribute>.filter_metadata[namespace][key] == value``, false when the key is absent.

    ``attribute``: a CEL attribute of Envoy's ``xds`` map holding metadata, such as
    ``upstream_host_metadata`` or ``route_metadata``.
    """

    attribute: str
    namespace: str
    key: str
    value: str


@dataclass(frozen=True)
class MetadataPresent:
    """``key in xds.<attribute>.filter_metadata[namespace]``: false when the namespace (or the attribute) is absent."""

    attribute: str
    namespace: str
    key: str


def all_of(*conditions: MetadataEquals | MetadataPresent) -> syntax_pb2.ParsedExpr:
    ids = itertools.count(1)  # every node of one expression has its own id
    terms = [_metadata_equals(ids, c) if isinstance(c, MetadataEquals) else _metadata_present(ids, c)
             for c in conditions]
    expr = terms[0]
    for term in terms[1:]:
        expr = _call(ids, "_&&_", expr, term)
    return syntax_pb2.ParsedExpr(expr=expr)


def _metadata_equals(ids: itertools.count, c: MetadataEquals) -> Expr:
    # `in` first: indexing a missing key is an evaluation error, not false.
    present = _call(ids, "@in", _string(ids, c.key), _namespace(ids, c))
    value = _call(ids, "_[_]", _namespace(ids, c), _string(ids, c.key))
    return _call(ids, "_&&_", present, _call(ids, "_==_", value, _string(ids, c.value)))


def _metadata_present(ids: itertools.count, c: MetadataPresent) -> Expr:
    # Indexing a missing namespace is an evaluation error, which the matcher takes as no match.
    return _call(ids, "@in", _string(ids, c.key), _namespace(ids, c))


def _namespace(ids: itertools.count, c: MetadataEquals | MetadataPresent) -> Expr:
    xds = Expr(id=next(ids), ident_expr=Expr.Ident(name="xds"))
    root = Expr(id=next(ids), select_expr=Expr.Select(operand=xds, field=c.attribute))
    filter_metadata = Expr(id=next(ids), select_expr=Expr.Select(operand=root, field="filter_metadata"))
    return _call(ids, "_[_]", filter_metadata, _string(ids, c.namespace))


def _string(ids: itertools.count, value: str) -> Expr:
    return Expr(id=next(ids), const_expr=syntax_pb2.Constant(string_value=value))


def _call(ids: itertools.count, function: str, *args: Expr) -> Expr:
    return Expr(id=next(ids), call_expr=Expr.Call(function=function, args=list(args)))
