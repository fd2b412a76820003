"""Benchmark exported gated segmenters: patches/s of each runtime vs PyTorch fp32 eager.

Same random weights and uint8 patches for every runtime, in one process:

* PyTorch fp32 eager (the baseline): the gated segmenter through the inference engine;
* PyTorch bf16 autocast (+ ``torch.compile`` with --compile), where the device supports it;
* ONNX Runtime on the exported fp32 graph (CPU, or CUDA with onnxruntime-gpu), fp16, and
  int8 (the fp32 graph quantized by ONNX Runtime's static quantizer, calibrated on patches
  drawn apart from the timed ones);
* TensorRT fp16, when tensorrt and a GPU are present.

Label agreement with the baseline is printed for each. Configurations: the paper's
(ResNet-38 gate + DeepLabV3+ ResNet-101, 224 px) and a small one (--encoder resnet18
--width 0.25).

    PYTHONPATH=. python benchmarks/bench_export.py --encoder resnet18 --width 0.25 --batch 16
    PYTHONPATH=. python benchmarks/bench_export.py --device cuda --batch 16 --compile
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_predict import build  # noqa: E402
from benchmarks.harness import machine, parse_cached  # noqa: E402
from histoseg_cli.core.export.fused import FusedGatedSegmenter  # noqa: E402
from histoseg_cli.core.export.onnx_export import export_onnx  # noqa: E402
from histoseg_cli.core.export.quantize import quantize_onnx  # noqa: E402
from histoseg_cli.core.inference.card import ModelCard  # noqa: E402
from histoseg_cli.core.inference.engine import InferenceEngine  # noqa: E402
from histoseg_cli.core.inference.gate import GatedSegmenter  # noqa: E402
from histoseg_cli.core.inference.onnx_runtime import OnnxEngine  # noqa: E402


def labels_of(engine, patches: np.ndarray, batch: int) -> np.ndarray:  # noqa: ANN001
    out = []
    for s in range(0, len(patches), batch):
        result = engine(patches[s:s + batch])
        labels = result["labels"] if "labels" in result else result["probs"].argmax(1)
        out.append(labels.to(torch.uint8).cpu())
    return torch.cat(out).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="resnet101")
    parser.add_argument("--width", type=float, default=1.0, help="resnet38d width multiplier")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=3, help="timed batches per runtime")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    args, device = parse_cached(parser)

    (classifier, cinfo), (segmenter, sinfo) = build(args)
    gated = GatedSegmenter(segmenter, sinfo.input_norm, classifier, cinfo.input_norm,
                           "classifier")
    card = ModelCard(class_names=cinfo.class_names, palette=[[0, 0, 0]] * 5,
                     patch_size=args.size, gate="classifier", gate_threshold=0.1)
    tag = f"{args.encoder}-{args.width}-{args.size}"
    files = {}
    for precision in ("fp32", "fp16"):
        path = args.cache / f"export-{tag}-{precision}.onnx"
        t = time.perf_counter()
        export_onnx(FusedGatedSegmenter(gated), card, path, precision=precision)
        files[precision] = path
        print(f"exported {path.name} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 256, (args.batch * args.batches, args.size, args.size, 3),
                           dtype=np.uint8)
    calibration = rng.integers(0, 256, (32, args.size, args.size, 3), dtype=np.uint8)
    files["int8"] = quantize_onnx(files["fp32"], args.cache / f"export-{tag}-int8.onnx",
                                  card, calibration)

    runtimes = {"pytorch fp32 eager": InferenceEngine.for_model(gated, None, device, "fp32",
                                                                channels_last=False)}
    if device.type == "cuda" or torch.backends.mkldnn.is_available():
        runtimes["pytorch bf16 autocast, channels_last"] = InferenceEngine.for_model(
            gated, None, device, "bf16", channels_last=True)
    if args.compile:
        compiled = InferenceEngine.for_model(gated, None, device, "auto", channels_last=True)
        compiled.model = torch.compile(compiled.model)
        runtimes["pytorch auto + torch.compile"] = compiled
    for precision, path in files.items():
        runtimes[f"onnxruntime {precision}"] = OnnxEngine.open(path, device, args.threads)
    if importlib.util.find_spec("tensorrt") and device.type == "cuda":
        from histoseg_cli.core.export.tensorrt_build import EngineConfig, build_engine
        from histoseg_cli.core.inference.tensorrt_runtime import TensorRTEngine, write_sidecar

        engine_path = args.cache / f"export-{tag}.engine"
        built = build_engine(files["fp32"], engine_path, args.size,
                             EngineConfig(opt_batch=args.batch, max_batch=args.batch))
        write_sidecar(engine_path, ModelCard(**{**card.__dict__, "extra": {"tensorrt": built}}))
        runtimes["tensorrt fp16"] = TensorRTEngine.open(engine_path)

    best = {name: np.inf for name in runtimes}
    labels = {}
    for engine in runtimes.values():
        labels_of(engine, patches[:args.batch], args.batch)  # warm-up
    for _ in range(args.repeats):
        for name, engine in runtimes.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t = time.perf_counter()
            labels[name] = labels_of(engine, patches, args.batch)
            best[name] = min(best[name], time.perf_counter() - t)
    base = "pytorch fp32 eager"
    print(f"gated segmenter: resnet38d (width {args.width}) gate + DeepLabV3+ {args.encoder}, "
          f"{args.size} px, batch {args.batch}, on {machine(str(device))}")
    for name, seconds in best.items():
        rate = len(patches) / seconds
        agree = (labels[name] == labels[base]).mean()
        print(f"  {name:38s} {rate:8.2f} patches/s  {best[base] / seconds:5.2f}x  "
              f"labels as fp32 eager: {agree:.4%}")


if __name__ == "__main__":
    main()
