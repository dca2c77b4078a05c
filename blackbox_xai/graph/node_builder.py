"""Nodes that stand in for one node of a graph, under tensor names no other tensor has."""

from __future__ import annotations

import onnx
from onnx import helper


class NodeBuilder:
    """Collects replacement nodes; ``taken`` is the graph's set of tensor names (shared by all
    the builders of one rewrite, and updated with every name given out)."""

    def __init__(self, prefix: str, taken: set[str]):
        self.prefix, self.taken = prefix, taken
        self.nodes: list[onnx.NodeProto] = []

    def tensor(self, hint: str) -> str:
        """A new name ``<prefix>/<hint>_<k>`` no tensor has."""
        k = len(self.nodes)
        while f"{self.prefix}/{hint}_{k}" in self.taken:
            k += 1
        return self.named(f"{self.prefix}/{hint}_{k}")

    def named(self, name: str) -> str | None:
        """``name`` when no tensor has it yet (then reserved), else None."""
        if name in self.taken:
            return None
        self.taken.add(name)
        return name

    def op(self, op_type: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        """Append an ``op_type`` node writing ``out`` (a new name when None); returns it."""
        out = out or self.tensor(op_type.lower())
        self.taken.add(out)
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out
