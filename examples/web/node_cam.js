// Run a model written by `onnxcam export` with onnxruntime-node: no Python, no onnxcam.
//   node node_cam.js MODEL.cam.onnx INPUT.bin N,C,H,W OUT.bin [TARGET_CLASS,...]
// INPUT.bin: the preprocessed float32 batch (raw little-endian). OUT.bin receives `cam` (float32, N x H x W);
// stdout: JSON with the shapes, the explained classes and the model's first output (its scores).
const fs = require('fs');
const ort = require('onnxruntime-node');

async function main() {
  const [modelPath, inputPath, shapeText, outPath, targetText] = process.argv.slice(2);
  const shape = shapeText.split(',').map(Number);
  const bytes = fs.readFileSync(inputPath);
  const data = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  const session = await ort.InferenceSession.create(modelPath);
  const feeds = { [session.inputNames[0]]: new ort.Tensor('float32', data, shape) };
  if (targetText !== undefined) {
    const targets = BigInt64Array.from(targetText.split(',').map(BigInt));
    feeds.target_class = new ort.Tensor('int64', targets, [targets.length]);
  }
  const out = await session.run(feeds);
  fs.writeFileSync(outPath, Buffer.from(out.cam.data.buffer, out.cam.data.byteOffset, out.cam.data.byteLength));
  const scores = out[session.outputNames[0]];
  console.log(JSON.stringify({
    cam_shape: out.cam.dims,
    cam_class: out.cam_class ? Array.from(out.cam_class.data, Number) : null,
    scores_shape: scores.dims,
    scores: Array.from(scores.data),
  }));
}

main().catch((error) => { console.error(`error: ${error.message}`); process.exit(1); });
