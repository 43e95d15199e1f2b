"""``geosane data``: build the offline detection composite and look at a detection folder."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from geosane.console import console

if TYPE_CHECKING:
    from geosane.data.detection import DetectionData

__all__ = ["register"]

data_app = typer.Typer(help="Datasets: build the offline detection composite, inspect detection folders.",
                       no_args_is_help=True)  # fmt: skip


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add the ``data`` command group to the root CLI."""
    app.add_typer(data_app, name="data")


@data_app.command("detection-composite")
def detection_composite(
    source: Path = typer.Option(..., "--source", help="RSSCN7 image folder (class folders aGrass, cIndustry, ...)."),
    out: Path = typer.Option(..., "--out", help="Output folder (COCO style; new, empty or an earlier composite)."),
    num_images: int = typer.Option(240, "--num-images", help="Composite images to write."),
    image_size: int = typer.Option(128, "--image-size", help="Side of each square image, pixels."),
    max_objects: int = typer.Option(4, "--max-objects", help="Objects pasted per image at most (0..N)."),
    seed: int = typer.Option(0, "--seed", help="Fixes every draw: the same seed writes identical files."),
) -> None:
    """Write a synthetic detection set made of real RSSCN7 scenes (objects pasted on backgrounds)."""
    from geosane.data.detection import build_composite_detection, load_detection_folder

    path = build_composite_detection(
        source, out, num_images=num_images, image_size=image_size, max_objects=max_objects, seed=seed
    )
    data = load_detection_folder(path, image_size=image_size)
    boxes = sum(len(t["labels"]) for t in data.targets)
    console.print(f"wrote {len(data)} images with {boxes} boxes ({', '.join(data.classes)}) to {path}")


@data_app.command("show-detection")
def show_detection(
    root: Path = typer.Argument(..., help="A COCO- or VOC-style detection folder."),
    image_size: int = typer.Option(128, "--image-size", help="Images are resized to this side on loading."),
    preview: Path | None = typer.Option(None, "--preview", help="Write a PNG grid of images with their boxes."),
    count: int = typer.Option(16, "--count", help="Images in the preview grid."),
) -> None:
    """Check a detection folder (every box is validated on loading) and summarise it."""
    from geosane.data.detection import load_detection_folder

    data = load_detection_folder(root, image_size=image_size)
    per_class = Counter(data.classes[int(label)] for t in data.targets for label in t["labels"])
    empty = sum(1 for t in data.targets if len(t["labels"]) == 0)
    console.print(f"{root}: {len(data)} images ({empty} without objects), {sum(per_class.values())} boxes")
    for name in data.classes:
        console.print(f"  {name}: {per_class.get(name, 0)}")
    if preview is not None:
        _write_preview(data, preview, count)
        console.print(f"preview: {preview}")


def _write_preview(data: DetectionData, path: Path, count: int) -> None:
    """A grid of the first ``count`` images with their boxes and class names drawn on them."""
    import torch
    from PIL import Image
    from torchvision.utils import draw_bounding_boxes, make_grid

    from geosane.io import atomic_path
    drawn = []
    for image, target in list(zip(data.images, data.targets, strict=True))[: max(count, 1)]:
        labels = [data.classes[int(i)] for i in target["labels"]]
        if labels:  # draw_bounding_boxes warns on an image without objects
            image = draw_bounding_boxes(image[:3], target["boxes"], labels=labels, colors="yellow", width=1)
        drawn.append(image[:3])
    grid = make_grid(torch.stack(drawn), nrow=4, padding=2)
    with atomic_path(path) as tmp:
        Image.fromarray(grid.permute(1, 2, 0).numpy()).save(tmp, format="PNG")
