from onnxcam.cli import app

app(prog_name="onnxcam")
