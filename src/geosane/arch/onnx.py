"""Rebuild ONNX graphs as PyTorch modules (onnx2torch): the ``onnx`` architecture library.

An ``ArchSpec("onnx", stem, {"graph": path, "sha256": ...})`` (written by :mod:`geosane.zoo.onnx`
for an ONNX file no other library describes) is rebuilt here from the file, which must be
unchanged. This lives below the zoo so that anything holding such a record can build it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from geosane.errors import SourceError
from geosane.io import sha256_file

__all__ = ["build_converted", "convert_onnx", "unsupported_ops"]

# onnx2torch 1.5 stops at opset 18 for Identity; torch >= 2.5 exports Identity v19+, whose newer
# versions only widen the accepted element types (same semantics), so the v16 converter applies.
_WIDENED_ONLY = {"Identity": (16, (19, 21, 23, 24, 25))}


def _register_widened_versions() -> None:
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription

    for op, (known, newer) in _WIDENED_ONLY.items():
        converter = _CONVERTER_REGISTRY.get(OperationDescription("", op, known))
        if converter is None:
            continue
        for version in newer:
            _CONVERTER_REGISTRY.setdefault(OperationDescription("", op, version), converter)


def unsupported_ops(proto: Any) -> list[tuple[str, str]]:
    """``(op, node name)`` of every node onnx2torch has no converter for (empty: all convertible)."""
    from onnx2torch.node_converters.registry import get_converter

    _register_widened_versions()
    opsets = {entry.domain or "": entry.version for entry in proto.opset_import}
    found = []
    for index, node in enumerate(proto.graph.node):
        domain = node.domain or ""
        try:
            get_converter(node.op_type, opsets.get(domain, opsets.get("", 1)), domain)
        except NotImplementedError:
            found.append((node.op_type if not domain else f"{domain}.{node.op_type}", node.name or f"#{index}"))
    return found


def _inline_initializer_aliases(proto: Any) -> Any:
    """``proto`` without Identity nodes that only rename an initializer (each alias becomes an
    initializer of its own). torch.onnx emits them for tensors it deduplicated (equal zero biases);
    onnx2torch reads Conv / Gemm weights from initializers only, so it refuses such graphs."""
    initializers = {init.name: init for init in proto.graph.initializer}
    kept = []
    for node in proto.graph.node:
        if node.op_type == "Identity" and not node.domain and len(node.input) == 1 and node.input[0] in initializers:
            alias = type(initializers[node.input[0]])()
            alias.CopyFrom(initializers[node.input[0]])
            alias.name = node.output[0]
            proto.graph.initializer.append(alias)
            initializers[alias.name] = alias
        else:
            kept.append(node)
    if len(kept) != len(proto.graph.node):
        del proto.graph.node[:]
        proto.graph.node.extend(kept)
    return proto


def convert_onnx(path: Path) -> nn.Module:
    """The graph at ``path`` as a PyTorch module (onnx2torch), naming an unsupported op and its node."""
    try:
        import onnx
        from onnx2torch import convert
    except ImportError:
        raise SourceError(
            f"{path}: converting an ONNX graph needs onnx2torch: pip install onnx2torch"
        ) from None
    proto = _inline_initializer_aliases(onnx.load(str(path)))
    missing = unsupported_ops(proto)
    if missing:
        op, node = missing[0]
        more = f" (and {len(missing) - 1} more nodes)" if len(missing) > 1 else ""
        raise SourceError(f"{path}: ONNX op '{op}' of node '{node}' has no PyTorch converter (onnx2torch){more}")
    try:
        module: nn.Module = convert(proto)
    except (NotImplementedError, ValueError, RuntimeError, TypeError, KeyError) as exc:
        raise SourceError(f"{path}: onnx2torch cannot convert the graph: {exc}") from None
    return module


def build_converted(kwargs: dict[str, Any]) -> nn.Module:
    """Rebuild a converted graph from its architecture record (the file must be unchanged)."""
    path = Path(str(kwargs.get("graph", "")))
    if not path.is_file():
        raise SourceError(
            f"the ONNX graph {path} of this architecture record is missing; it is needed to rebuild the model"
        )
    recorded = kwargs.get("sha256")
    if recorded and sha256_file(path) != recorded:
        raise SourceError(f"the ONNX graph {path} changed since it was recorded (SHA-256 differs)")
    return convert_onnx(path)
