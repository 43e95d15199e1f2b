"""ONNX models as full zoo citizens: an architecture for their initializers, metadata, parity.

An ``.onnx`` file holds a graph and its weights (initializers) but no record a PyTorch library
can rebuild. :func:`describe_onnx` gives it one, in this order:

1. a **sidecar** (``<stem>.json`` beside the file, the layout ``ukis-csmask`` ships: ``data``
   ``in_channels`` / ``classes`` / ``dataset_statistics`` and ``model`` ``encoder_name`` /
   ``decoder_name``) that names an ``segmentation_models_pytorch`` architecture: the initializers,
   named like the smp model's state dict under one common prefix (``model.``), are mapped onto it.
   Tensors the exported graph never used (ONNX export drops them, e.g. EfficientNet's unused
   ``_conv_head``) are filled from a seeded initialisation and listed in ``info["filled_from_init"]``;
2. otherwise the graph is **converted** with ``onnx2torch`` and recorded as
   ``ArchSpec("onnx", stem, {"graph": path, "sha256": ...})``, which rebuilds it from the file
   (checked against the recorded SHA-256);
3. a graph with an op onnx2torch cannot convert keeps its initializers without an architecture (a
   zoo member to tokenize, as before); a loud warning names the op and its node, and so does every
   command that needs the architecture (``info["no_architecture"]``).

Either way :func:`check_parity` runs the rebuilt module and onnxruntime (graph optimisations off:
ORT's fused kernels alone move csmask logits by ~0.03, while the PyTorch module matches a float64
run to 1e-5) on the same input and refuses a relative difference beyond the tolerance.

The sidecar also fills the manifest row: bands, per-band mean/std (``metadata.normalization``,
applied when the model is evaluated or fine-tuned), classes, task; the license comes from the
installed package that ships the file. A sidecar that contradicts the weights is refused.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geosane.arch.meta import check_fits
from geosane.arch.onnx import build_converted, convert_onnx, unsupported_ops
from geosane.arch.spec import ArchSpec, LoadedModel, build_architecture
from geosane.errors import SourceError
from geosane.io import sha256_file

__all__ = [
    "DEFAULT_PARITY_TOLERANCE",
    "OnnxSidecar",
    "ParityReport",
    "build_converted",
    "check_parity",
    "describe_onnx",
    "load_parity_images",
    "package_license",
    "parity_inputs",
    "read_sidecar",
    "unsupported_ops",
]

# max |torch - onnxruntime| / max |onnxruntime|: the csmask U-Nets measure 1.4e-4 (docs/zoo.md)
DEFAULT_PARITY_TOLERANCE = 1e-3
_FILL_SEED = 0


@dataclass(frozen=True)
class OnnxSidecar:
    """What a model's JSON sidecar says about it (``None``: not stated)."""

    path: Path
    in_chans: int | None
    num_classes: int | None
    bands: list[str] | None
    mean: list[float] | None
    std: list[float] | None
    encoder_name: str | None
    decoder_name: str | None
    version: str | None
    input_size: list[int] | None

    @property
    def task(self) -> str | None:
        return "segmentation" if self.decoder_name else None


def read_sidecar(onnx_path: str | Path) -> OnnxSidecar | None:
    """The ``<stem>.json`` beside ``onnx_path`` in the ukis-csmask layout, or None if there is none."""
    path = Path(onnx_path).with_suffix(".json")
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SourceError(f"sidecar {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), dict):
        return None  # some other JSON file that happens to share the stem
    section, model = data["data"], data["model"] if isinstance(data.get("model"), dict) else {}
    stats = section.get("dataset_statistics") or {}
    img = stats.get("img")
    mean = std = None
    if isinstance(img, list) and len(img) == 2:
        mean, std = [float(v) for v in img[0]], [float(v) for v in img[1]]
    bands = stats.get("band_names")
    return OnnxSidecar(
        path=path,
        in_chans=_int_or_none(section.get("in_channels")),
        num_classes=_int_or_none(section.get("classes")),
        bands=[str(b) for b in bands] if isinstance(bands, list) else None,
        mean=mean,
        std=std,
        encoder_name=model.get("encoder_name") if isinstance(model.get("encoder_name"), str) else None,
        decoder_name=model.get("decoder_name") if isinstance(model.get("decoder_name"), str) else None,
        version=str(model["version"]) if model.get("version") is not None else None,
        input_size=list(section["target_size"]) if isinstance(section.get("target_size"), list) else None,
    )


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


_LICENSE_CLASSIFIERS = {
    "Apache Software License": "Apache-2.0",
    "MIT License": "MIT",
    "BSD License": "BSD",
    "GNU General Public License v3 (GPLv3)": "GPL-3.0",
}


def package_license(path: str | Path) -> str | None:
    """The license of the installed Python distribution that ships ``path`` (None if none does).

    The file's top-level package under a ``sys.path`` entry names the distribution
    (``importlib.metadata.packages_distributions``); the license is its ``License-Expression``,
    an OSI classifier, or its ``License`` field.
    """
    import sys

    target = Path(path).resolve()
    top = None
    for entry in sys.path:
        try:
            top = target.relative_to(Path(entry or ".").resolve()).parts[0]
            break
        except (ValueError, IndexError, OSError):
            continue
    if top is None:
        return None
    for name in importlib.metadata.packages_distributions().get(top, []):
        metadata = importlib.metadata.metadata(name)
        # an email.message.Message at run time; typeshed's PackageMetadata protocol lacks get() before 3.12
        if metadata.get("License-Expression"):  # type: ignore[attr-defined]
            return str(metadata["License-Expression"])
        for classifier in metadata.get_all("Classifier") or []:
            label = classifier.rsplit("::", 1)[-1].strip()
            if classifier.startswith("License ::") and label in _LICENSE_CLASSIFIERS:
                return _LICENSE_CLASSIFIERS[label]
        if metadata.get("License"):  # type: ignore[attr-defined]
            return str(metadata["License"]).strip()
    return None


# ---------------------------------------------------------------------------------------------
# architecture: smp mapping or onnx2torch conversion


def _common_prefix(names: Sequence[str]) -> str:
    """A dotted prefix every name shares (``model.``), or ``""``."""
    first = names[0].split(".")[0] + "."
    return first if all(n.startswith(first) for n in names) else ""


def _smp_mapping(
    model: LoadedModel, sidecar: OnnxSidecar
) -> tuple[ArchSpec, dict[str, torch.Tensor], list[str]] | None:
    """The smp ArchSpec, state dict and filled tensors, when the sidecar names an smp model the
    initializers fit; None when it names none (a mismatch is reported, then conversion is tried)."""
    from geosane.console import console

    if not (sidecar.decoder_name and sidecar.encoder_name):
        return None
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        return None
    arch_class = smp.MODEL_ARCHITECTURES_MAPPING.get(sidecar.decoder_name.lower().replace("_", ""))
    if arch_class is None:
        return None
    names = list(model.state_dict)
    prefix = _common_prefix(names)
    state_dict = {n.removeprefix(prefix): t for n, t in model.state_dict.items()}
    kwargs: dict[str, Any] = {"encoder_name": sidecar.encoder_name}
    for key, value in (("in_channels", sidecar.in_chans), ("classes", sidecar.num_classes)):
        if value is not None:
            kwargs[key] = value
    arch = ArchSpec("smp", arch_class.__name__, kwargs)
    with torch.random.fork_rng():
        torch.manual_seed(_FILL_SEED)  # unused tensors get the same values on every machine
        try:
            initial = build_architecture(arch).state_dict()
        except SourceError as exc:
            console.print(f"[yellow]warning:[/] {model.source}: sidecar names {arch.name} {kwargs}: {exc}")
            return None
    filled = [k for k in initial if k not in state_dict]
    floats = [t.dtype for t in state_dict.values() if t.is_floating_point()]
    dtype = max(set(floats), key=floats.count) if floats else torch.float32  # fp16 graphs stay fp16

    def fill(key: str) -> torch.Tensor:
        value = initial[key].clone()
        return value.to(dtype) if value.is_floating_point() else value

    completed = {k: state_dict[k] if k in state_dict else fill(k) for k in initial}
    completed.update((k, v) for k, v in state_dict.items() if k not in completed)
    problems = check_fits(arch, completed, reference=initial)
    if problems:
        console.print(
            f"[yellow]warning:[/] {model.source}: the sidecar names smp:{arch.name} {kwargs} but the "
            f"initializers do not fit it ({problems[0]}); converting the graph instead"
        )
        return None
    return arch, completed, [k for k in filled if not k.endswith("num_batches_tracked")]


def describe_onnx(model: LoadedModel) -> LoadedModel:
    """``model`` (initializers read from an ONNX file) with an architecture and its sidecar's metadata."""
    path = Path(model.info["onnx_file"])
    sidecar = read_sidecar(path)
    info = {"name": path.stem, **model.info}
    if sidecar is not None:
        _check_sidecar(sidecar, model.state_dict, info)
        info.update(_sidecar_info(sidecar))
    license_ = package_license(path)
    if license_ and not info.get("license"):
        info["license"] = license_
    mapped = _smp_mapping(model, sidecar) if sidecar is not None else None
    if mapped is not None:
        arch, state_dict, filled = mapped
        if filled:
            info["filled_from_init"] = filled
    else:
        try:
            module = convert_onnx(path)
        except SourceError as exc:  # still a zoo member to tokenize; nothing can rebuild it
            from geosane.console import console

            console.print(
                f"[bold yellow]warning:[/] {exc}; only its initializers are used (no architecture: it cannot "
                "be a prompt, fine-tuned or evaluated unless --arch names one its weights fit)"
            )
            info["no_architecture"] = str(exc)
            info["metadata"] = {**(info.get("metadata") or {}), "no_architecture": str(exc)}
            return dataclasses.replace(model, info=info)
        arch = ArchSpec("onnx", path.stem, {"graph": str(path), "sha256": sha256_file(path)})
        state_dict = {k: v.detach().clone() for k, v in module.state_dict().items()}
    return dataclasses.replace(model, state_dict=state_dict, arch=arch, info=info)


def _sidecar_info(sidecar: OnnxSidecar) -> dict[str, Any]:
    info: dict[str, Any] = {"sidecar": str(sidecar.path)}
    if sidecar.in_chans is not None:
        info["in_chans"] = sidecar.in_chans
        info["modality"] = "rgb" if sidecar.in_chans == 3 else "multispectral"
    if sidecar.num_classes is not None:
        info["num_classes"] = sidecar.num_classes
    if sidecar.bands:
        info["bands"] = sidecar.bands
    if sidecar.task:
        info["task"] = sidecar.task
    metadata = dict(info.get("metadata") or {})
    if sidecar.mean and sidecar.std:
        metadata["normalization"] = {"mean": sidecar.mean, "std": sidecar.std}
    if sidecar.version:
        metadata["model_version"] = sidecar.version
    if sidecar.input_size:
        metadata["input_size"] = sidecar.input_size
    info["metadata"] = metadata
    return info


def _check_sidecar(sidecar: OnnxSidecar, state_dict: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    """Refuse a sidecar whose band count, classes or statistics contradict the weights."""
    where = f"sidecar {sidecar.path}"
    graph_bands = info.get("in_chans")
    if sidecar.in_chans is not None and graph_bands is not None and sidecar.in_chans != graph_bands:
        raise SourceError(f"{where} says in_channels {sidecar.in_chans}, but the weights take {graph_bands} bands")
    expected = sidecar.in_chans if sidecar.in_chans is not None else graph_bands
    for name, values in (("band_names", sidecar.bands), ("mean", sidecar.mean), ("std", sidecar.std)):
        if values is not None and expected is not None and len(values) != expected:
            raise SourceError(f"{where} lists {len(values)} {name} for {expected} bands")
    outputs = info.get("onnx_output_channels")
    if outputs is None:
        head = [t for n, t in state_dict.items() if "segmentation_head" in n and n.endswith(".weight")]
        outputs = int(head[-1].shape[0]) if head else None
    if sidecar.num_classes is not None and outputs is not None and sidecar.num_classes != outputs:
        raise SourceError(f"{where} says classes {sidecar.num_classes}, but the weights output {outputs} classes")


# ---------------------------------------------------------------------------------------------
# parity with onnxruntime


@dataclass(frozen=True)
class ParityReport:
    """How closely the rebuilt PyTorch module reproduces onnxruntime on ``inputs``."""

    max_abs: float
    relative: float
    argmax_agreement: float
    tolerance: float
    inputs: str
    checked: bool = True

    @property
    def passed(self) -> bool:
        return not self.checked or self.relative <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _input_size(model: LoadedModel) -> list[int]:
    """Height and width the model takes: its sidecar's, else the graph's static input, else 64."""
    return (model.info.get("metadata") or {}).get("input_size") or model.info.get("onnx_input_size") or [64, 64]


def parity_inputs(model: LoadedModel, images: torch.Tensor | None = None, batch: int = 2) -> tuple[torch.Tensor, str]:
    """Model inputs for the parity check and their description.

    ``images`` (real data, ``[N, C, H, W]`` in the units the model's normalisation expects) are
    normalised with ``metadata.normalization`` when recorded; without them, seeded standard-normal
    inputs of the graph's input size (the normalised space) are used.
    """
    from geosane.data import Normalization, recorded_normalization

    if images is not None:  # 8-bit images are scaled to [0, 1] either way
        channels = int(images.shape[1])
        norm = recorded_normalization(model.info) or Normalization((0.0,) * channels, (1.0,) * channels)
        x = norm(images)
        return x, f"{x.shape[0]} real image(s) {tuple(x.shape[1:])}"
    size = _input_size(model)
    shape = list(model.info.get("onnx_input_shape") or [0, int(model.info.get("in_chans") or 3), 0, 0])
    if len(shape) == 4:  # images: dynamic height and width take the model's input size
        shape[2], shape[3] = shape[2] or int(size[0]), shape[3] or int(size[1])
    shape = [dim or (batch if i == 0 else 64) for i, dim in enumerate(shape)]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=generator)
    return x, f"{shape[0]} seeded random input(s) {tuple(x.shape[1:])}"


def check_parity(
    model: LoadedModel,
    images: torch.Tensor | None = None,
    tolerance: float = DEFAULT_PARITY_TOLERANCE,
) -> ParityReport:
    """Compare ``model.build()`` with onnxruntime on the same input; raise beyond ``tolerance``.

    Without onnxruntime the check cannot run: a loud warning, and a report with ``checked=False``.
    """
    from geosane.console import console

    path = Path(model.info["onnx_file"])
    x, described = parity_inputs(model, images)
    try:
        import onnxruntime as ort
    except ImportError:
        console.print(
            f"[bold yellow]warning:[/] {path}: onnxruntime is not installed, so the rebuilt model was NOT "
            "checked against the ONNX graph (pip install 'geosane[onnx]')"
        )
        return ParityReport(float("nan"), float("nan"), float("nan"), tolerance, described, checked=False)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    reference = np.concatenate([session.run(None, {input_name: x[i : i + 1].numpy()})[0] for i in range(len(x))])
    module = model.build().eval()
    with torch.no_grad():
        output = module(x)
    got = (output[0] if isinstance(output, (tuple, list)) else output).numpy()
    if got.shape != reference.shape:
        raise SourceError(f"{path}: the rebuilt model outputs {got.shape}, onnxruntime {reference.shape}")
    max_abs = float(np.abs(got - reference).max())
    relative = max_abs / max(float(np.abs(reference).max()), 1e-12)
    agreement = float((got.argmax(1) == reference.argmax(1)).mean()) if got.ndim >= 2 else float("nan")
    report = ParityReport(max_abs, relative, agreement, tolerance, described)
    if not report.passed:
        assert model.arch is not None  # model.build() above needed it
        raise SourceError(
            f"{path}: the rebuilt {model.arch.library}:{model.arch.name} differs from onnxruntime by "
            f"{max_abs:.3g} (relative {relative:.2e} > tolerance {tolerance:.0e}) on {described}; not used"
        )
    return report


def load_parity_images(path: str | Path, model: LoadedModel, limit: int = 8) -> torch.Tensor:
    """Up to ``limit`` real images from ``path`` for :func:`check_parity`, in the model's input size.

    ``path``: a folder of csmask-style ``.npz`` scenes (cut into chips of the model's input size)
    or an image folder (8-bit images scaled to [0, 1]). Bands are matched by name when both the
    data and the model name them, else the data must have the model's band count.
    """
    from geosane.data import load_csmask, load_image_folder
    from geosane.errors import DataError

    root = Path(path).expanduser()
    size = _input_size(model)
    wanted = int(model.info.get("in_chans") or 3)
    if root.is_dir() and any(root.glob("*.npz")):
        chips = load_csmask(root, chip_size=int(size[0]))
        images, bands = chips.images, list(chips.bands)
    else:
        images, bands = load_image_folder(root, int(size[0])).images, None  # 8-bit: scaled by Normalization
    model_bands = model.info.get("bands")
    if images.shape[1] != wanted and bands and model_bands:
        aliases = {"swir16": "swir1", "swir22": "swir2"}
        names = [aliases.get(b, b) for b in model_bands]
        missing = [b for b in names if b not in bands]
        if missing:
            raise DataError(f"parity data {root} has bands {bands}; the model needs {model_bands}")
        images = images[:, [bands.index(b) for b in names]]
    if images.shape[1] != wanted:
        raise DataError(f"parity data {root} has {images.shape[1]} bands, the model takes {wanted}")
    step = max(1, len(images) // limit)
    return images[::step][:limit]
