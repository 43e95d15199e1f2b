"""Layer types of tokenized tensors, inferred from an ``nn.Module`` or from names and shapes.

Every token carries the type of the layer it came from (``TokenizedModel.layer_type``), as an
integer code of :class:`LayerType`. With a module, the owning submodule's class decides
(:func:`module_layer_types`); without one (a bare state dict) :func:`infer_layer_type` applies
these rules, first match wins, to a layer's *main* tensor (the weight when a bias is appended):

1. ``embedding``: the tensor's own name is a learned position/class table (``pos_embed``,
   ``cls_token``, ``reg_token``, ``dist_token``, ``mask_token``, ``*position_embedding*``,
   ``relative_position_bias_table``, ``rel_pos_*``, ...), or a 2-D ``weight`` whose module name
   (the last component before ``.weight``) contains ``emb``, ``wte`` or ``wpe``.
2. ``conv1d`` / ``conv2d`` / ``conv3d``: a 3-, 4- or 5-D tensor.
3. ``linear``: a 2-D tensor.
4. 1-D or 0-D tensors: ``batchnorm`` if the state dict holds ``<module>.running_mean`` or the
   module name contains ``bn``/``batchnorm``; ``other_norm`` if it contains ``gn``, ``groupnorm``,
   ``group_norm``, ``instance``, ``rms`` or ``lrn``; ``layernorm`` if it contains ``norm`` or starts
   with ``ln``; ``layernorm`` for a 1-D ``weight`` with a sibling ``bias`` and no name hint (e.g.
   ``stem.1.weight`` of a ``Sequential``: an affine norm without running statistics); otherwise
   ``other`` (layer scales, lone biases, scalars).
"""

from __future__ import annotations

import re
from collections.abc import Container
from enum import IntEnum

from torch import nn

__all__ = ["LAYER_TYPE_NAMES", "LayerType", "infer_layer_type", "module_layer_types"]


class LayerType(IntEnum):
    """Integer codes stored in ``TokenizedModel.layer_type`` (stable: the token store depends on them)."""

    OTHER = 0
    CONV1D = 1
    CONV2D = 2
    CONV3D = 3
    LINEAR = 4
    EMBEDDING = 5
    BATCHNORM = 6
    LAYERNORM = 7
    OTHER_NORM = 8

    @property
    def label(self) -> str:
        return self.name.lower()


LAYER_TYPE_NAMES: tuple[str, ...] = tuple(t.label for t in LayerType)

_EMBEDDING_TENSOR = re.compile(
    r"^(pos_embed\w*|\w*pos_embedding\w*|\w*position_embeddings?|cls_token|reg_token|dist_token|mask_token"
    r"|\w*_token|relative_position_bias_table|rel_pos\w*|absolute_pos_embed|query_tokens)$"
)
_EMBEDDING_MODULE = re.compile(r"emb|wte|wpe")
_OTHER_NORM_MODULE = re.compile(r"gn|groupnorm|group_norm|instance|rms|lrn")


def _split(name: str) -> tuple[str, str]:
    """``"a.b.weight"`` -> ``("a.b", "weight")``."""
    prefix, _, leaf = name.rpartition(".")
    return prefix, leaf


def is_embedding_name(name: str) -> bool:
    """Whether ``name`` is a learned position/class table by its last component."""
    return bool(_EMBEDDING_TENSOR.match(_split(name)[1].lower()))


def infer_layer_type(name: str, shape: tuple[int, ...], state_dict_keys: Container[str]) -> LayerType:
    """The layer type of tensor ``name`` with ``shape`` from names and shapes alone (rules above)."""
    prefix, leaf = _split(name)
    module = _split(prefix)[1].lower() if prefix else ""
    if is_embedding_name(name):
        return LayerType.EMBEDDING
    ndim = len(shape)
    if ndim == 2 and leaf == "weight" and _EMBEDDING_MODULE.search(module):
        return LayerType.EMBEDDING
    if ndim in (3, 4, 5):
        return (LayerType.CONV1D, LayerType.CONV2D, LayerType.CONV3D)[ndim - 3]
    if ndim == 2:
        return LayerType.LINEAR
    if ndim > 5:
        return LayerType.OTHER
    stats = f"{prefix}.running_mean" if prefix else "running_mean"
    if stats in state_dict_keys or "bn" in module or "batchnorm" in module:
        return LayerType.BATCHNORM
    if _OTHER_NORM_MODULE.search(module):
        return LayerType.OTHER_NORM
    if "norm" in module or module.startswith("ln"):
        return LayerType.LAYERNORM
    if ndim == 1 and leaf == "weight" and f"{prefix}.bias" in state_dict_keys:
        return LayerType.LAYERNORM  # an affine scale + shift without running statistics
    return LayerType.OTHER


def _module_type(module: nn.Module) -> LayerType | None:
    if isinstance(module, nn.Conv1d | nn.ConvTranspose1d):
        return LayerType.CONV1D
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        return LayerType.CONV2D
    if isinstance(module, nn.Conv3d | nn.ConvTranspose3d):
        return LayerType.CONV3D
    if isinstance(module, nn.Linear | nn.Bilinear):
        return LayerType.LINEAR
    if isinstance(module, nn.Embedding | nn.EmbeddingBag):
        return LayerType.EMBEDDING
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return LayerType.BATCHNORM
    if isinstance(module, nn.LayerNorm):
        return LayerType.LAYERNORM
    if isinstance(
        module, nn.GroupNorm | nn.modules.instancenorm._InstanceNorm | nn.LocalResponseNorm | nn.RMSNorm
    ):
        return LayerType.OTHER_NORM
    cls = type(module).__name__.lower()
    if "norm" in cls:  # library norms that do not subclass torch's (e.g. timm's RmsNorm)
        if "batch" in cls:
            return LayerType.BATCHNORM
        if "layer" in cls:
            return LayerType.LAYERNORM
        return LayerType.OTHER_NORM
    return None


def module_layer_types(module: nn.Module) -> dict[str, tuple[LayerType | None, bool, bool]]:
    """For every state-dict entry of ``module``: (type from its owner's class, is_parameter, transposed).

    The type is ``None`` when the owner's class says nothing (the name/shape rules then decide);
    ``transposed`` marks transposed convolutions, whose bias matches dim 1 rather than dim 0.
    """
    parameters = {name for name, _ in module.named_parameters(remove_duplicate=False)}
    info: dict[str, tuple[LayerType | None, bool, bool]] = {}
    for mod_name, mod in module.named_modules(remove_duplicate=False):
        owned = list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False))
        if not owned:
            continue
        kind = _module_type(mod)
        transposed = isinstance(mod, nn.modules.conv._ConvTransposeNd)
        for leaf, _ in owned:
            full = f"{mod_name}.{leaf}" if mod_name else leaf
            typ = LayerType.EMBEDDING if is_embedding_name(full) else kind
            info[full] = (typ, full in parameters, transposed)
    return info
