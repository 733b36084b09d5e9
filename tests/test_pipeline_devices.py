"""The GPU path, checked on the CPU: provider choice and its messages, I/O binding equivalence, float16 models.

No test needs a GPU; on a machine with a usable one, the selection tests check the GPU is chosen instead.
"""

from __future__ import annotations

import ctypes.util
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcam.errors import OnnxcamError
from onnxcam.explainer import Explainer
from onnxcam.graph.reverse.model import expose
from onnxcam.jobs.explain import explain_images
from onnxcam.runners import gradients
from onnxcam.runtime import choose_providers, cuda_usable, make_session, provider_problem

ROOT = Path(__file__).resolve().parent.parent
CUDA_BUILD = "CUDAExecutionProvider" in ort.get_available_providers()


def small_cnn(dtype: int = TensorProto.FLOAT, size: int = 16, classes: int = 4) -> onnx.ModelProto:
    """Conv -> Relu -> GlobalAveragePool -> Gemm, entirely in `dtype` (float16 models cast nothing inside)."""
    np_type = np.float16 if dtype == TensorProto.FLOAT16 else np.float32
    rng = np.random.default_rng(2)
    weights = {"w": rng.standard_normal((6, 3, 3, 3)) * 0.5, "fc_w": rng.standard_normal((6, classes)),
               "fc_b": rng.standard_normal(classes) * 0.1}
    nodes = [helper.make_node("Conv", ["x", "w"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["act"]),
             helper.make_node("GlobalAveragePool", ["act"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"])]
    graph = helper.make_graph(nodes, "small_cnn", [helper.make_tensor_value_info("x", dtype, ["N", 3, size, size])],
                              [helper.make_tensor_value_info("logits", dtype, ["N", classes])],
                              [numpy_helper.from_array(v.astype(np_type), k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


# --- provider choice ----------------------------------------------------------------------------------------------
def test_cpu_and_explicit_providers() -> None:
    assert choose_providers("cpu") == ["CPUExecutionProvider"]
    assert choose_providers("cuda", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]  # explicit list wins
    with pytest.raises(OnnxcamError, match="unknown device 'gpu0'; use auto, cpu, cuda or tensorrt"):
        choose_providers("gpu0")


def test_auto_picks_the_gpu_exactly_when_it_can_run() -> None:
    providers = choose_providers("auto")
    assert providers[-1] == "CPUExecutionProvider"
    assert ("CUDAExecutionProvider" in providers) == cuda_usable() == (provider_problem("CUDAExecutionProvider")
                                                                      is None)
    tensorrt_ok = cuda_usable() and provider_problem("TensorrtExecutionProvider") is None
    assert (providers[0] == "TensorrtExecutionProvider") == tensorrt_ok


@pytest.mark.parametrize("device, name", [("cuda", "CUDA"), ("tensorrt", "TensorRT")])
def test_requested_gpu_that_cannot_run_is_one_clear_line(device: str, name: str) -> None:
    provider = "CUDAExecutionProvider" if device == "cuda" else "TensorrtExecutionProvider"
    problem = provider_problem("CUDAExecutionProvider") or provider_problem(provider)
    if problem is None:
        assert choose_providers(device)[0] == provider
        return
    with pytest.raises(OnnxcamError) as info:
        choose_providers(device)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{name} was requested but cannot run here: {problem}")
    assert message.endswith("or use --device cpu")


@pytest.mark.skipif(not CUDA_BUILD, reason="this onnxruntime has no CUDA provider")
def test_missing_cuda_libraries_are_named() -> None:
    # A stand-in for the driver: then the next check, loading the CUDA provider library, has to name what is missing.
    stand_in = ctypes.util.find_library("c") or "libc.so.6"
    problem = provider_problem("CUDAExecutionProvider", stand_in)
    if problem is None:
        pytest.skip("the CUDA libraries are installed here")
    first = problem.split(" ")[0]
    assert first.startswith("lib") and ".so" in first and "is missing; install the CUDA and cuDNN" in problem
    if not cuda_usable():
        assert "driver" in (provider_problem("CUDAExecutionProvider") or "")


def test_the_cli_reports_an_unusable_gpu_on_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from onnxcam import cli

    if cuda_usable():
        pytest.skip("CUDA runs here")
    result = CliRunner().invoke(cli.app, ["explain", str(ROOT / "models" / "shapes_resnet.onnx"),
                                          str(ROOT / "examples" / "images" / "01_circle.png"), "-o",
                                          str(tmp_path), "--device", "cuda"])
    assert result.exit_code == 2 and "CUDA was requested but cannot run here" in result.output
    assert "Traceback" not in result.output


# --- I/O binding ------------------------------------------------------------------------------------------------
def test_bound_runs_equal_plain_runs_and_reuse_read_only_batches() -> None:
    model = expose(small_cnn(), ["act"])
    plain, bound = make_session(model, ["CPUExecutionProvider"]), make_session(model, ["CPUExecutionProvider"])
    assert not plain.bind and plain.device == "cpu"  # on the CPU the plain path is the default
    bound.bind = True
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    want = plain.run(["logits", "act"], {"x": x})
    for got, expected in zip(bound.run(["logits", "act"], {"x": x}), want):
        np.testing.assert_array_equal(got, expected)
    assert bound.uploads == 1
    x[0] += 1.0  # a writable array may change between runs: it is copied again each time
    changed = bound.run(["logits"], {"x": x})[0]
    np.testing.assert_array_equal(changed, plain.run(["logits"], {"x": x})[0])
    assert bound.uploads == 2 and not np.array_equal(changed, want[0])

    frozen = x.copy()
    frozen.flags.writeable = False
    for _ in range(3):  # a read-only batch goes to the device once
        np.testing.assert_array_equal(bound.run(["logits"], {"x": frozen})[0], plain.run(["logits"], {"x": x})[0])
    assert bound.uploads == 3
    other = frozen.copy()
    other.flags.writeable = False
    bound.run(["logits"], {"x": other})  # another array, even with equal values, is uploaded
    assert bound.uploads == 4


# --- float16 models ------------------------------------------------------------------------------------------------
def test_float16_model_gradients_match_float32() -> None:
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    half = gradients(small_cnn(TensorProto.FLOAT16), x, providers=["CPUExecutionProvider"])
    full = gradients(small_cnn(TensorProto.FLOAT), x.astype(np.float16).astype(np.float32),
                     providers=["CPUExecutionProvider"])
    assert half.scores.dtype == np.float32 and half.gradients["act"].dtype == np.float32  # cast at the boundary
    np.testing.assert_array_equal(half.targets, full.targets)
    np.testing.assert_allclose(half.scores, full.scores, rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(half.gradients["act"], full.gradients["act"], rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "eigencam", "scorecam"])
def test_float16_model_maps_match_float32(method: str) -> None:
    x = np.random.default_rng(3).standard_normal((2, 3, 16, 16)).astype(np.float16)
    half = Explainer(small_cnn(TensorProto.FLOAT16), device="cpu").explain(x, method)
    full = Explainer(small_cnn(TensorProto.FLOAT), device="cpu").explain(x.astype(np.float32), method)
    assert half.dtype == np.float32 and half.shape == (2, 16, 16)
    np.testing.assert_allclose(half, full, atol=2e-2)


def test_float16_model_through_explain_images(tmp_path: Path) -> None:
    import cv2

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), np.random.default_rng(i).integers(0, 256, (20, 24, 3), np.uint8))
    model = tmp_path / "half.onnx"
    onnx.save(small_cnn(TensorProto.FLOAT16), str(model))
    summary = explain_images(model, [folder], tmp_path / "out", device="cpu", methods=["gradcam", "eigencam"])
    assert (summary.done, summary.failed) == (3, 0)
    cam = np.load(tmp_path / "out" / "0.png.gradcam.npy")
    assert cam.dtype == np.float32 and cam.shape == (20, 24) and np.isfinite(cam).all()
