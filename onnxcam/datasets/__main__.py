"""`python -m onnxcam.datasets --out DIR --count N --seed S [--size 96] [--multi]`: write a shapes data set."""

from onnxcam.datasets.shapes import main

main()
