"""Pictures of segmentations: the PASCAL VOC palette, palette PNGs, overlays with a legend, and figures.

The palette is the VOC devkit's (as the release's vis.py makes it), so class k has the same colour in
our PNGs as in the VOC ground truth, and void (255) is VOC's cream. Figures use matplotlib's object
API (no pyplot, no display needed).
"""
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

VOID = 255


def palette(n=256):
    """n×3 uint8 VOC colour map: the bits of each class index spread over R, G, B from the top bit down."""
    k = np.arange(n)
    pal = np.zeros((n, 3), np.uint8)
    for i in range(8):
        for c in range(3):
            pal[:, c] |= (((k >> (3 * i + c)) & 1) << (7 - i)).astype(np.uint8)
    return pal


def _labels(label):
    x = label.detach().cpu().numpy() if hasattr(label, "detach") else np.asarray(label)
    if x.ndim != 2:
        raise ValueError(f"a label map is H×W, got shape {x.shape}")
    if x.size and (x.min() < 0 or x.max() > 255):
        raise ValueError(f"label values must lie in [0, 255], got [{x.min()}, {x.max()}]")
    return x.astype(np.uint8)


def colorize(label):
    """H×W×3 uint8 RGB of a label map in the VOC palette."""
    return palette()[_labels(label)]


def label_image(label):
    """A palette-indexed (mode P) PIL image of a label map: indices kept, VOC colours attached."""
    im = Image.fromarray(_labels(label), mode="P")
    im.putpalette(palette().ravel().tolist())
    return im


def save_label_png(path, label):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    label_image(label).save(path)
    return path


def blend(rgb, label, alpha=0.5):
    """The image with every non-background, non-void pixel blended with its class colour (as vis.py)."""
    rgb, label = np.asarray(rgb), _labels(label)
    if rgb.shape[:2] != label.shape:
        raise ValueError(f"image size {rgb.shape[:2]} differs from label size {label.shape}")
    out = rgb.astype(np.float32)
    mask = (label > 0) & (label != VOID)
    out[mask] = (1 - alpha) * out[mask] + alpha * palette()[label[mask]]
    return out.astype(np.uint8)


def overlay(rgb, label, classes=None, alpha=0.5, legend=True):
    """The blended image with, to its right, a legend of the classes present (colour swatch and name)."""
    im = Image.fromarray(blend(rgb, label, alpha))
    present = [int(k) for k in np.unique(_labels(label)) if k != VOID]
    if not legend or not present:
        return np.asarray(im)
    font = ImageFont.load_default()
    names = [classes[k] if classes is not None and k < len(classes) else f"class {k}" for k in present]
    row = 14
    width = 24 + max(int(font.getlength(n)) for n in names) + 8
    height = max(im.height, row * len(present) + 8)
    canvas = Image.new("RGB", (im.width + width, height), (255, 255, 255))
    canvas.paste(im, (0, 0))
    draw = ImageDraw.Draw(canvas)
    pal = palette()
    for j, (k, name) in enumerate(zip(present, names)):
        y = 4 + j * row
        draw.rectangle([im.width + 4, y, im.width + 16, y + 10], fill=tuple(int(v) for v in pal[k]),
                       outline=(0, 0, 0))
        draw.text((im.width + 22, y - 1), name, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def results_figure(rows, columns, classes=None, scale=2.0):
    """A matplotlib Figure: one row per image, columns image / ground truth / each prediction.

    ``rows``: list of (rgb, label, [prediction, ...]); ``columns``: titles of the predictions
    (e.g. FCN-32s, FCN-16s, FCN-8s). A legend names the classes that appear.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    ncol = 2 + len(columns)
    h, w = np.asarray(rows[0][0]).shape[:2]
    fig = Figure(figsize=(scale * ncol * w / max(h, w), scale * len(rows) * h / max(h, w) + 0.5))
    axes = fig.subplots(len(rows), ncol, squeeze=False)
    present = set()
    for r, (rgb, label, preds) in enumerate(rows):
        if len(preds) != len(columns):
            raise ValueError(f"row {r} has {len(preds)} predictions for {len(columns)} columns")
        panels = [np.asarray(rgb), colorize(label)] + [colorize(p) for p in preds]
        for k in [label] + list(preds):
            present |= set(np.unique(_labels(k)).tolist())
        for c, (ax, panel) in enumerate(zip(axes[r], panels)):
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title((["image", "ground truth"] + list(columns))[c], fontsize=9)
    pal = palette() / 255.0
    handles = [Patch(facecolor=pal[k], edgecolor="black", linewidth=0.5,
                     label=(classes[k] if classes is not None and k < len(classes) else f"class {k}")
                     if k != VOID else "void") for k in sorted(present)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.4 / fig.get_figheight(), 1, 1))
    return fig


def iu_bar_chart(per_class_iu, classes, title="per-class IU"):
    """A matplotlib Figure of grouped bars: per-class IU (0..1 or NaN) for each named run."""
    from matplotlib.figure import Figure

    names = list(per_class_iu)
    n = len(classes)
    fig = Figure(figsize=(max(6.0, 0.45 * n * max(1, len(names)) ** 0.5 + 2), 3.6))
    ax = fig.subplots()
    width = 0.8 / max(1, len(names))
    x = np.arange(n)
    for j, name in enumerate(names):
        iu = np.asarray([np.nan if v is None else v for v in per_class_iu[name]], dtype=np.float64)
        if iu.shape != (n,):
            raise ValueError(f"'{name}' has {iu.size} per-class values for {n} classes")
        ax.bar(x + (j - (len(names) - 1) / 2) * width, np.nan_to_num(iu) * 100, width, label=name)
    ax.set_xticks(x, classes, rotation=60 if n > 8 else 0, ha="right" if n > 8 else "center", fontsize=8)
    ax.set_ylabel("IU (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def training_curves(logs):
    """A matplotlib Figure of each run's smoothed training loss (left) and validation mean IU
    (right) against the iteration; ``logs``: {run name: the Trainer's log.jsonl records}."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.6))
    loss_ax, iu_ax = fig.subplots(1, 2)
    for k, (name, records) in enumerate(logs.items()):
        colour = f"C{k % 10}"  # one colour per run in both panels (a run may lack validations)
        steps = [(r["iter"], r["smoothed_loss"]) for r in records if "smoothed_loss" in r]
        vals = [(r["iter"], 100 * next(iter(r["results"].values()))["mean_iu"]) for r in records
                if r.get("event") == "val"]
        if steps:
            loss_ax.plot(*zip(*steps), color=colour, label=name)
        if vals:
            iu_ax.plot(*zip(*vals), color=colour, marker="o", markersize=3, label=name)
    loss_ax.set(xlabel="iteration of the run", ylabel="training loss (smoothed)", yscale="log")
    iu_ax.set(xlabel="iteration of the run", ylabel="validation mean IU (%)", ylim=(0, 100))
    for ax in (loss_ax, iu_ax):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
