"""CLI manners: did-you-mean for methods and options with the accepted ones listed, `onnxcam methods` with a place
to start and a legend, explain --class-names / evaluate --ground-truth (the old --labels kept as deprecated
aliases), and `import onnxcam` from the folder above a checkout named onnxcam."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from onnxcam import cli

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "shapes_resnet.onnx"
IMAGE = ROOT / "examples" / "images" / "03_ring.png"
runner = CliRunner()


def _explain(tmp_path: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(cli.app, ["explain", str(MODEL), str(IMAGE), "-o", str(tmp_path / "out"), "--device", "cpu",
                                     *args])
    return result.exit_code, result.output


def test_a_mistyped_method_gets_a_suggestion(tmp_path: Path) -> None:
    code, output = _explain(tmp_path, "-m", "gradcamm")
    assert code == 2 and "unknown method 'gradcamm' (did you mean 'gradcam'?)" in output
    assert "valid methods:" in output and "scorecam" in output and len(output.strip().splitlines()) == 1


def test_a_mistyped_option_lists_what_the_methods_accept(tmp_path: Path) -> None:
    code, output = _explain(tmp_path, "-m", "opticam", "--option", "iteratons=5")
    assert code == 2 and "(did you mean 'iterations'?)" in output
    assert "accept:" in output and "lr" in output and "early_stop" in output


def test_methods_says_where_to_start_and_what_k_is() -> None:
    result = runner.invoke(cli.app, ["methods"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert result.output.startswith("Start here: gradcam")
    assert "K = channels of the explained layer" in result.output and "h*w = positions" in result.output
    eigencam = next(line for line in result.output.splitlines() if "│ eigencam " in line)
    scorecam = next(line for line in result.output.splitlines() if "│ scorecam " in line)
    assert "│ no " in eigencam and "│ no " in scorecam  # neither needs a backward pass


def test_explain_class_names_and_the_deprecated_labels(tmp_path: Path) -> None:
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"shape{i}" for i in range(8)) + "\n")
    code, output = _explain(tmp_path, "--class-names", str(names), "-t", "shape5")
    assert code == 0 and "deprecated" not in output
    code, output = _explain(tmp_path, "--labels", str(names), "-t", "shape5")
    assert code == 0 and "'explain --labels' is deprecated; use --class-names" in output
    other = tmp_path / "other.txt"
    other.write_text(names.read_text())
    code, output = _explain(tmp_path, "--labels", str(names), "--class-names", str(other))
    assert code == 2 and "--labels is the old name of --class-names" in output


def test_evaluate_ground_truth_and_the_deprecated_labels(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.png").write_bytes(IMAGE.read_bytes())
    truth = tmp_path / "truth.csv"
    truth.write_text("file,class\nnope.png,ring\n")  # an image that is not there: a usage error either way
    base = ["evaluate", str(MODEL), str(folder), "-o", str(tmp_path / "eval"), "--device", "cpu"]
    result = runner.invoke(cli.app, [*base, "--ground-truth", str(truth)])
    assert result.exit_code == 2 and "'nope.png' is not among the images" in result.output
    assert "deprecated" not in result.output
    result = runner.invoke(cli.app, [*base, "--labels", str(truth)])
    assert result.exit_code == 2 and "'nope.png' is not among the images" in result.output
    assert "'evaluate --labels' is deprecated; use --ground-truth" in result.output


def test_import_from_the_folder_above_a_checkout_named_onnxcam(tmp_path: Path) -> None:
    (tmp_path / "onnxcam").symlink_to(ROOT, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                        if p and Path(p).resolve() != ROOT)
    done = subprocess.run([sys.executable, "-c", "import onnxcam, onnxcam.jobs.explain; "
                           "print(onnxcam.Explainer.__name__, onnxcam.__file__)"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    name, path = done.stdout.split()
    assert name == "Explainer" and Path(path) == tmp_path / "onnxcam" / "onnxcam" / "__init__.py"
    assert done.stderr == "" or done.stderr.startswith("note: 'import onnxcam' found the source checkout")
