"""Synthetic shapes: a small image benchmark with exact ground truth (class, mask, box), NumPy + OpenCV only.

Each image is a cluttered background (colour gradient, random lines and small irregular blobs, sensor noise)
with one object, or two objects of different classes (`multi=True`), at a random position, scale, rotation and
colour; half of the objects are partly hidden by an occluding bar. Objects are drawn at 4x resolution and
area-averaged down, so edges are anti-aliased and the mask (coverage > 1/2) matches what is visible.

Dataset folder written by `write_dataset`:

    images/<stem>.png   RGB images, size x size
    masks/<stem>.png    single-channel uint8 label map: 0 background, class index + 1 on each object's visible pixels
    labels.csv          header `file,class`; one row per object (a two-object image has two rows); `file` is the
                        image path relative to the folder (`images/<stem>.png`), `class` the class name
    boxes.json          {file: [{"class": name, "index": class index, "box": [x0, y0, x1, y1]}, ...]} where the box
                        is the tight box of the object's visible mask in pixels, x1/y1 exclusive
    classes.txt         the class names, one per line, in index order

Everything derives from one seed: the same seed gives byte-identical files.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring", "checker", "stripes")

_SS = 4  # supersampling factor for shape masks
_MIN_VISIBLE = 0.6  # an occluder may hide at most 40% of an object

Sample = tuple[np.ndarray, list[int], np.ndarray, np.ndarray]
Rng = np.random.Generator
Drawn = tuple[np.ndarray, np.ndarray]  # coverage (H, W) in [0, 1], fill colours (H, W, 3)


def make_sample(rng: np.random.Generator, size: int = 96, classes: Sequence[str] = CLASSES,
                multi: bool = False) -> Sample:
    """One image with its ground truth: (image uint8 (H, W, 3) RGB, labels, masks bool (K, H, W), boxes int (K, 4)).

    labels index `classes`; K is 1, or 2 with `multi` (two different classes, the second drawn over the first);
    masks are the visible pixels of each object and boxes their tight boxes [x0, y0, x1, y1] (x1, y1 exclusive).
    """
    unknown = [c for c in classes if c not in _DRAW]
    if unknown:
        raise ValueError(f"unknown shape class(es) {unknown}; available: {', '.join(CLASSES)}")
    count = 2 if multi else 1
    if len(classes) < count:
        raise ValueError(f"multi=True needs at least two classes, got {list(classes)}")
    image = _background(rng, size)
    labels = [int(i) for i in rng.choice(len(classes), size=count, replace=False)]
    radii = rng.uniform(0.11, 0.2, count) * size if multi else rng.uniform(0.16, 0.32, 1) * size
    centres = _place(rng, radii, size)
    masks = np.zeros((count, size, size), bool)
    for k, (label, radius, centre) in enumerate(zip(labels, radii, centres)):
        colour = _object_colour(rng, image, centre, radius)
        alpha, fill = _DRAW[classes[label]](rng, size, centre, float(radius), colour)
        image = _blend(image, fill, alpha)
        cover = alpha > 0.5
        masks[:k] &= ~cover
        masks[k] = cover
        if rng.random() < 0.5:
            occluder = _occlude(rng, size, masks[k], float(radius))
            if occluder is not None:
                alpha, fill = occluder
                image = _blend(image, fill, alpha)
                masks[: k + 1] &= ~(alpha > 0.5)
    noise = rng.normal(0.0, rng.uniform(3.0, 12.0), image.shape)
    image = np.clip(image + noise, 0, 255).astype(np.uint8)
    boxes = np.array([_box(m) for m in masks], dtype=np.int64).reshape(count, 4)
    return image, labels, masks, boxes


def write_dataset(folder: str | Path, count: int, seed: int, size: int = 96, multi: bool = False,
                  classes: Sequence[str] = CLASSES) -> Path:
    """Write `count` samples from `seed` into `folder` (layout in the module docstring); returns the folder."""
    root = Path(folder)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    rows: list[tuple[str, str]] = []
    boxes_json: dict[str, list[dict[str, object]]] = {}
    for i in range(count):
        image, labels, masks, boxes = make_sample(rng, size, classes, multi)
        stem = f"{'multi' if multi else 'shape'}_{i:05d}"
        file = f"images/{stem}.png"
        label_map = np.zeros((size, size), np.uint8)
        for label, mask in zip(labels, masks):
            label_map[mask] = label + 1
        _write_png(root / file, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        _write_png(root / "masks" / f"{stem}.png", label_map)
        rows += [(file, classes[label]) for label in labels]
        boxes_json[file] = [{"class": classes[label], "index": label, "box": [int(v) for v in box]}
                            for label, box in zip(labels, boxes)]
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["file", "class"])
        writer.writerows(rows)
    (root / "boxes.json").write_text(json.dumps(boxes_json, indent=1) + "\n")
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    return root


def generate(count: int, seed: int, size: int = 96, multi: bool = False,
             classes: Sequence[str] = CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """In-memory batch: images uint8 (count, size, size, 3) RGB and first-object labels (count,) int64."""
    rng = np.random.default_rng(seed)
    images = np.empty((count, size, size, 3), np.uint8)
    labels = np.empty(count, np.int64)
    for i in range(count):
        images[i], sample_labels, _, _ = make_sample(rng, size, classes, multi)
        labels[i] = sample_labels[0]
    return images, labels


# --- drawing ------------------------------------------------------------------------------------------------------
def _write_png(path: Path, array: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise OSError(f"could not encode {path}")
    path.write_bytes(data.tobytes())


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Float (H, W, 3) in [0, 255]: a two-colour linear gradient with thin lines and small irregular blobs."""
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / size
    t = np.clip(0.5 + (xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle), 0, 1)[..., None]
    image = np.ascontiguousarray(a * (1 - t) + b * t)
    for _ in range(rng.integers(2, 7)):
        p, q = rng.uniform(-0.1, 1.1, (2, 2)) * size
        cv2.line(image, _pt(p), _pt(q), _colour(rng), int(rng.integers(1, 3)), cv2.LINE_AA)
    for _ in range(rng.integers(2, 6)):
        centre = rng.uniform(0, size, 2)
        n = int(rng.integers(5, 9))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        r = rng.uniform(0.02, 0.07, n) * size
        pts = centre + np.stack([r * np.cos(angles), r * np.sin(angles)], axis=1)
        cv2.fillPoly(image, [np.round(pts).astype(np.int32)], _colour(rng), cv2.LINE_AA)
    return image


def _place(rng: np.random.Generator, radii: np.ndarray, size: int) -> np.ndarray:
    """Centres keeping each object (mostly) inside the image; two objects barely overlap."""
    best, best_gap = None, -np.inf
    for _ in range(30):
        centres = np.stack([rng.uniform(0.8 * r, size - 0.8 * r, 2) for r in radii])
        if len(radii) == 1:
            return centres
        gap = float(np.linalg.norm(centres[0] - centres[1]) - 0.9 * radii.sum())
        if gap > 0:
            return centres
        if gap > best_gap:
            best, best_gap = centres, gap
    assert best is not None
    return best


def _colour(rng: np.random.Generator) -> tuple[float, float, float]:
    c = rng.uniform(0, 255, 3)
    return float(c[0]), float(c[1]), float(c[2])


def _object_colour(rng: np.random.Generator, image: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    """A saturated colour that differs clearly from the background around the object."""
    size = image.shape[0]
    x0, y0 = np.clip((centre - radius).astype(int), 0, size - 1)
    x1, y1 = np.clip((centre + radius).astype(int), x0 + 1, size)
    local = image[y0:y1, x0:x1].reshape(-1, 3).mean(axis=0)
    best, best_dist = np.zeros(3), -1.0
    for _ in range(8):
        hsv = np.array([[[rng.uniform(0, 180), rng.uniform(150, 255), rng.uniform(120, 255)]]], np.uint8)
        rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float64)
        dist = float(np.linalg.norm(rgb - local))
        if dist > 120:
            return rgb
        if dist > best_dist:
            best, best_dist = rgb, dist
    return best


def _blend(image: np.ndarray, fill: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None]
    return image * (1 - a) + fill * a


def _coverage(size: int, draw: Callable[[np.ndarray, int], object]) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of a shape drawn by `draw(canvas, scale)` on a supersampled canvas."""
    canvas = np.zeros((size * _SS, size * _SS), np.uint8)
    draw(canvas, _SS)
    return cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA).astype(np.float64) / 255.0


def _polygon(centre: np.ndarray, radius: float, angle: float, radii: Sequence[float]) -> np.ndarray:
    """Vertices at evenly spaced angles with the given relative radii, rotated by `angle`."""
    n = len(radii)
    t = angle + np.arange(n) * 2 * np.pi / n
    r = radius * np.asarray(radii)
    return centre + np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _fill_polys(size: int, polys: Sequence[np.ndarray]) -> np.ndarray:
    """Union of polygons (one fillPoly call per polygon: a single call would XOR their overlap)."""
    def draw(canvas: np.ndarray, scale: int) -> None:
        for p in polys:
            cv2.fillPoly(canvas, [np.round(p * scale).astype(np.int32)], 255)
    return _coverage(size, draw)


def _disc(size: int, centre: np.ndarray, radius: float) -> np.ndarray:
    return _coverage(size, lambda c, s: cv2.circle(c, _pt(centre * s), int(round(radius * s)), 255, -1))


def _solid(colour: np.ndarray, size: int) -> np.ndarray:
    return np.broadcast_to(colour, (size, size, 3))


def _texture(rng: np.random.Generator, size: int, colour: np.ndarray, centre: np.ndarray, radius: float,
             kind: str) -> np.ndarray:
    """Two-colour pattern (checkerboard or stripes) at a random angle: the object colour and its complement."""
    other = 255.0 - colour
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    u = (xx - centre[0]) * np.cos(angle) + (yy - centre[1]) * np.sin(angle)
    v = -(xx - centre[0]) * np.sin(angle) + (yy - centre[1]) * np.cos(angle)
    period = radius * rng.uniform(0.45, 0.65)
    if kind == "checker":
        on = (np.floor(u / period) + np.floor(v / period)) % 2 == 0
    else:
        on = np.floor(u / (0.6 * period)) % 2 == 0
    return np.where(on[..., None], colour, other)


def _circle(rng: Rng, size: int, centre: np.ndarray, radius: float, colour: np.ndarray) -> Drawn:
    return _disc(size, centre, radius), _solid(colour, size)


def _square(rng: Rng, size: int, centre: np.ndarray, radius: float, colour: np.ndarray) -> Drawn:
    return _fill_polys(size, [_polygon(centre, radius, rng.uniform(0, np.pi / 2), [1.0] * 4)]), _solid(colour, size)


def _triangle(rng: Rng, size: int, centre: np.ndarray, radius: float, colour: np.ndarray) -> Drawn:
    return _fill_polys(size, [_polygon(centre, radius, rng.uniform(0, 2 * np.pi), [1.0] * 3)]), _solid(colour, size)


def _star(rng: Rng, size: int, centre: np.ndarray, radius: float, colour: np.ndarray) -> Drawn:
    poly = _polygon(centre, radius, rng.uniform(0, 2 * np.pi), [1.0, 0.45] * 5)
    return _fill_polys(size, [poly]), _solid(colour, size)


def _cross(rng: Rng, size: int, centre: np.ndarray, radius: float, colour: np.ndarray) -> Drawn:
    angle, w = rng.uniform(0, np.pi / 2), 0.32
    arm = np.array([[-1, -w], [1, -w], [1, w], [-1, w]]) * radius
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    polys = [centre + arm @ rot.T, centre + arm[:, ::-1] @ rot.T]
    return _fill_polys(size, polys), _solid(colour, size)


def _ring(rng: Rng, size: int, centre: np.ndarray, radius: float, colour: np.ndarray) -> Drawn:
    hole = _disc(size, centre, radius * rng.uniform(0.45, 0.6))
    return np.clip(_disc(size, centre, radius) - hole, 0, 1), _solid(colour, size)


def _checker(rng: Rng, size: int, centre: np.ndarray, radius: float, colour: np.ndarray) -> Drawn:
    alpha = _fill_polys(size, [_polygon(centre, radius, rng.uniform(0, np.pi / 2), [1.0] * 4)])
    return alpha, _texture(rng, size, colour, centre, radius, "checker")


def _stripes(rng: Rng, size: int, centre: np.ndarray, radius: float, colour: np.ndarray) -> Drawn:
    return _disc(size, centre, radius), _texture(rng, size, colour, centre, radius, "stripes")


_DRAW: dict[str, Callable[[Rng, int, np.ndarray, float, np.ndarray], Drawn]] = {
    "circle": _circle, "square": _square, "triangle": _triangle, "star": _star, "cross": _cross,
    "ring": _ring, "checker": _checker, "stripes": _stripes}


def _occlude(rng: np.random.Generator, size: int, mask: np.ndarray,
             radius: float) -> tuple[np.ndarray, np.ndarray] | None:
    """A bar of a random colour across part of the object, hiding at most 1 - _MIN_VISIBLE of it."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    for _ in range(10):
        i = int(rng.integers(len(xs)))
        centre = np.array([xs[i], ys[i]], np.float64)
        half = np.array([rng.uniform(0.8, 2.0), rng.uniform(0.12, 0.3)]) * radius
        angle = rng.uniform(0, np.pi)
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        corners = centre + (np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half) @ rot.T
        alpha = _fill_polys(size, [corners])
        if (mask & ~(alpha > 0.5)).sum() >= _MIN_VISIBLE * mask.sum():
            return alpha, _solid(np.asarray(_colour(rng)), size)
    return None


def _box(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [0, 0, 0, 0]
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def _pt(p: np.ndarray) -> tuple[int, int]:
    return int(round(float(p[0]))), int(round(float(p[1])))


# --- command line -------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> None:
    """`python -m onnxcam.datasets.shapes --out DIR --count N --seed S [--size 96] [--multi]`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m onnxcam.datasets.shapes",
                                     description="Write a synthetic shapes data set (images, masks, labels.csv, "
                                                 "boxes.json, classes.txt); the same seed gives the same files.")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--count", type=int, default=200, help="number of images (default 200)")
    parser.add_argument("--seed", type=int, default=2, help="random seed (models/shapes_resnet.onnx: train 1, test 2)")
    parser.add_argument("--size", type=int, default=96, help="image side in pixels (default 96)")
    parser.add_argument("--multi", action="store_true", help="two objects of different classes per image")
    args = parser.parse_args(argv)
    if args.count < 1 or args.size < 16:
        parser.error("--count must be at least 1 and --size at least 16")
    root = write_dataset(args.out, args.count, args.seed, args.size, args.multi)
    print(f"wrote {args.count} images to {root}")


if __name__ == "__main__":
    main()
