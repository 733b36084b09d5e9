"""Gradients that scatter-add onto repeated indices are exact on every run, not only on small inputs.

onnxruntime's CPU ScatterND with reduction="add" splits its updates over threads and loses some when indices
repeat (microsoft/onnxruntime#18048: at the sizes below most runs are wrong); a rule built on it passes the small
finite-difference checks and fails on real inputs. These checks use inputs large enough to hit that.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from gradcheck import make_op_model

from onnxcam.graph.load import load_model
from onnxcam.graph.reverse.model import GRAD_PREFIX, SEED, gradient_model


def test_gather_nd_with_many_repeated_indices() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((256, 64)).astype(np.float32)
    indices = rng.integers(0, 256, (16384, 1))
    model = make_op_model("GatherND", {"x": x}, {"i": indices})
    built = gradient_model(load_model(model), ["x"], output="y0", probabilities=True)
    session = ort.InferenceSession(built.model.SerializeToString(), providers=["CPUExecutionProvider"])
    seed = rng.standard_normal((16384, 64)).astype(np.float32)
    expected = np.zeros(x.shape)
    np.add.at(expected, indices[:, 0], seed.astype(np.float64))
    for _ in range(5):
        got = session.run([GRAD_PREFIX + "x"], {"x": x, SEED: seed})[0]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
