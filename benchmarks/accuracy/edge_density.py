"""Content statistics on hired-tiny's two test families: the sharp-edge density that ``HiRED(adapt=...)``
reads, beside two statistics it was chosen over (mean gradient magnitude, PNG size) and the entropy of the
full image's [CLS] attention at HiRED's budget layer.

    python benchmarks/accuracy/edge_density.py            # 120 test images per family, a few minutes

Prints, per family, each statistic's 10th, 50th and 90th percentiles and its correlation with the number
of items in the image (shapes on a photo, table cells), and the median density over both families.
"""

from __future__ import annotations

import argparse
import io

import numpy as np
import torch

import hired
from hired.models import dense, task, tiny_vlm


def pixel_statistics(image) -> dict[str, float]:
    """Mean absolute difference of neighbouring grey levels (0..255), and PNG bytes per pixel."""
    grey = np.asarray(image.convert("L"), dtype=np.float32)
    gradient = np.abs(np.diff(grey, axis=1)).mean() + np.abs(np.diff(grey, axis=0)).mean()
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return {"gradient": float(gradient), "png": buffer.tell() / grey.size}


def cls_perplexity(model, processor, image) -> float:
    """exp(entropy) of the full image's [CLS] attention at HiRED's budget layer (the number of patches it
    is spread over)."""
    inputs = processor(images=image, text=tiny_vlm.prompt("?"), return_tensors="pt")
    with torch.inference_mode():
        model.model.get_image_features(pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"])
    row = hired.last_scores(model)[0]["budget"][0]
    p = row / row.sum()
    return float(torch.exp(-(p * p.clamp_min(1e-12).log()).sum()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=120, help="test images per family")
    args = parser.parse_args()
    model, processor = tiny_vlm.load_hired_tiny()
    hired.apply(model, processor, hired.HiRED(budget=0.2))
    everything = []
    for name, module in (("first (shapes on photos)", task), ("dense (tables)", dense)):
        scenes = module.make_split("test", args.images, seed=0).scenes
        images = [dense.render_any(scene) for scene in scenes]
        items = np.array([len(s.shapes) if module is task else len(s.values) * len(s.values[0]) for s in scenes])
        density = np.array(hired.edge_densities(model, processor, images))
        everything.append(density)
        others = [pixel_statistics(img) for img in images]
        columns = {
            "sharp-edge density": density,
            "mean gradient (grey levels)": np.array([o["gradient"] for o in others]),
            "PNG bytes per pixel": np.array([o["png"] for o in others]),
            "[CLS] attention perplexity": np.array([cls_perplexity(model, processor, img) for img in images]),
        }
        print(f"{name}, {len(images)} images")
        for label, values in columns.items():
            p10, p50, p90 = np.percentile(values, [10, 50, 90])
            corr = np.corrcoef(values, items)[0, 1]
            print(f"  {label:28s} p10 {p10:9.4f}  median {p50:9.4f}  p90 {p90:9.4f}  corr. with items {corr:+.2f}")
    print(f"median sharp-edge density over both families: {np.median(np.concatenate(everything)):.4f}")
    hired.remove(model, processor)


if __name__ == "__main__":
    main()
