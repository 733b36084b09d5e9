"""Synthetic image data sets with ground truth (classes, masks, boxes) for demos, tests and localisation metrics."""

from onnxcam.datasets.shapes import CLASSES, generate, make_sample, write_dataset

__all__ = ["CLASSES", "generate", "make_sample", "write_dataset"]
