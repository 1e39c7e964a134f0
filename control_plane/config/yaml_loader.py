"""Reading YAML text safely: a SafeLoader that rejects duplicate keys, and
syntax errors described by line and column without quoting the line (it may
hold an API key).

Aliases are bounded too: a 530-byte "billion laughs" document (each list
refers nine times to the one before) composes in microseconds, since PyYAML
shares an aliased node, but everything that walks the loaded tree afterwards
(``${ENV}`` expansion, validation) visits every reference: seconds of CPU and
gigabytes. The loader counts each node's size with its aliases expanded while
it composes the document, and refuses one above ``MAX_EXPANDED_NODES``.
"""

from __future__ import annotations

from typing import Any

import yaml


class _YamlSyntaxError(Exception):
    """The text is not YAML; the message carries the line and column."""


# Far above any real config (a hundred providers and routes is a few thousand
# nodes), far below what takes the control plane a noticeable time to walk.
MAX_EXPANDED_NODES = 100_000

_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys and leaves dates as strings.

    PyYAML keeps the last of two duplicate keys silently, which would hide a
    provider defined twice. Dates become strings because no Hapax value is a
    date, and ``version: 2024-06-01`` should stay the text the user wrote.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._sizes: dict[int, int] = {}  # id(node) -> its size with aliases expanded

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        alias = self.check_event(yaml.AliasEvent)
        node = super().compose_node(parent, index)
        if not alias:
            self._sizes[id(node)] = self._expanded_size(node)
        elif id(node) not in self._sizes:  # &a [*a]: the anchor is not complete yet
            raise yaml.composer.ComposerError(None, None, "an alias refers to the node that holds it", node.start_mark)
        return node  # an alias is its anchor's node, already counted

    def _expanded_size(self, node: yaml.Node) -> int:
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        size = 1 + sum(self._sizes[id(child)] for child in children)
        if size > MAX_EXPANDED_NODES:
            raise yaml.composer.ComposerError(
                None, None,
                f"aliases expand this node to more than {MAX_EXPANDED_NODES:,} values (an alias bomb?)",
                node.start_mark,
            )
        return size

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        _reject_duplicate_keys(node)
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, OverflowError):  # e.g. "!!int abc": give it a line number
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this value as {node.tag.rsplit(':', 1)[-1]}", node.start_mark
            ) from None


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _construct_str(loader: _Loader, node: yaml.Node) -> str:
    # PyYAML's own str constructor, called on the loader: typeshed's add_constructor
    # takes a function of a Loader, not the SafeConstructor method itself.
    return loader.construct_yaml_str(node)


_Loader.add_constructor(_TIMESTAMP_TAG, _construct_str)


def _reject_duplicate_keys(node: yaml.MappingNode) -> None:
    seen: dict[tuple[str, str], yaml.Mark] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
            continue  # merged keys (<<: *base) are meant to be overridden
        ident = (key_node.tag, key_node.value)
        if ident in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key_node.value!r} (first defined on line {seen[ident].line + 1})",
                key_node.start_mark,
            )
        seen[ident] = key_node.start_mark


def _load_yaml(text: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        raise _YamlSyntaxError(_describe_yaml_error(exc)) from None


def _describe_yaml_error(exc: yaml.YAMLError) -> str:
    # Built from the parts, not str(exc): PyYAML's own text quotes the offending
    # line, which could be the one holding an API key.
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None)
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if problem is None or mark is None:
        return f"invalid YAML: {' '.join(str(exc).split())}"  # one line, like every other issue
    message = f"invalid YAML at {_position(mark)}: {problem}"
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and context_mark and context != problem:
        message += f" ({context} started at {_position(context_mark)})"
    return message


def _position(mark: yaml.Mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"
