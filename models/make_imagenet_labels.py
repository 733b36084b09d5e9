"""Write onnxcam/data/imagenet1k.txt: the 1000 ImageNet-1k class names in class-index order, one per line.

The names are torchvision's (`torchvision.models._meta._IMAGENET_CATEGORIES`: WordNet lemmas made unique, e.g. the
two "crane" classes are "crane" and "crane bird"), so a torchvision or timm model's class 262 reads as torchvision
names it. torchvision is a dev-only dependency; the written file is committed and onnxcam reads it at run time.

    python models/make_imagenet_labels.py
"""

from __future__ import annotations

from pathlib import Path

from torchvision.models._meta import _IMAGENET_CATEGORIES

OUT = Path(__file__).resolve().parent.parent / "onnxcam" / "data" / "imagenet1k.txt"

if __name__ == "__main__":
    names = list(_IMAGENET_CATEGORIES)
    assert len(names) == 1000 and len(set(names)) == 1000 and not any("\n" in n for n in names)
    OUT.write_text("\n".join(names) + "\n", encoding="utf-8")
    print(f"wrote {len(names)} names to {OUT}")
