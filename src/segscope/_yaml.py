"""YAML for configs: the safe loader, after the document's size (aliases expanded) and depth are checked."""

from __future__ import annotations

from typing import Any

__all__ = ["YAMLSyntaxError", "load_yaml"]

_MAX_YAML_NODES = 100_000
_MAX_YAML_DEPTH = 64


class YAMLSyntaxError(ValueError):
    """The text is not YAML a config can be read from (PyYAML's message, whose first line says where)."""


def load_yaml(text: str) -> Any:
    """YAML's safe loader, after checking the document's size *with aliases expanded* (nine levels of aliases
    expand to billions of nodes) and its depth, on the composed node graph before anything is built.
    :class:`YAMLSyntaxError` when it is not YAML or too large. PyYAML is imported here, by the commands that read
    a YAML config, not by every command that imports the config's types (20 ms at each start)."""
    import yaml

    try:
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:  # the reader refuses a character YAML does not allow
        raise YAMLSyntaxError(str(exc)) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return {}
        sizes: dict[int, int] = {}

        def expanded(n: yaml.Node, depth: int) -> int:
            if depth > _MAX_YAML_DEPTH:
                raise yaml.YAMLError(f"nested deeper than {_MAX_YAML_DEPTH} levels")
            if id(n) not in sizes:
                children: list[yaml.Node] = []
                if isinstance(n, yaml.SequenceNode):
                    children = list(n.value)
                elif isinstance(n, yaml.MappingNode):
                    children = [part for pair in n.value for part in pair]
                sizes[id(n)] = 1 + sum(expanded(c, depth + 1) for c in children)
                if sizes[id(n)] > _MAX_YAML_NODES:
                    raise yaml.YAMLError(f"it expands to over {_MAX_YAML_NODES:,} values (aliases of aliases?)")
            return sizes[id(n)]

        expanded(node, 0)
        return loader.construct_document(node) or {}
    except yaml.YAMLError as exc:
        raise YAMLSyntaxError(str(exc)) from None
    finally:
        loader.dispose()
