"""What the benchmarks share: the machine's name, a timed loop, running each mode in its own
process so peak memory is measured cleanly, and timing a whole command with the peak memory
of its process tree."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def machine(device: str) -> str:
    """The GPU's name, or the CPU model and torch's thread count."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


def time_steps(one_step: Callable[[], None], finish: Callable[[], object], device: str,
               warmup: int, steps: int) -> tuple[float, float]:
    """Seconds for ``steps`` calls after ``warmup`` untimed ones (``finish`` reads the result
    once, as the training loop does per epoch), and peak memory in bytes (GPU allocated on
    CUDA, process RSS otherwise)."""
    import torch

    cuda = device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(torch.device(device))

    for _ in range(warmup):
        one_step()
    finish()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats(torch.device(device))
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    finish()
    sync()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated(torch.device(device)) if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return seconds, peak


def run_modes(script: str, raw_args: list[str], modes: str) -> list[dict[str, object]]:
    """Rerun ``script`` once per mode with ``--child MODE``; each prints one JSON line."""
    results = []
    for mode in [m.strip() for m in modes.split(",") if m.strip()]:
        proc = subprocess.run([sys.executable, script, *raw_args, "--child", mode],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{mode} run failed:\n{proc.stderr[-2000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return results


#: (mode, other mode, the summary's name for mode / other)
RATIOS = (("default", "reference", "speedup"),
          ("channels_last", "contiguous", "channels_last_speedup"))


def report(title: str, results: list[dict[str, object]], as_json: bool,
           config: dict[str, object]) -> None:
    """Print each mode's figures and default / each other mode, or all of it as JSON."""
    summary: dict[str, object] = {"config": config, "results": results}
    by_mode = {str(r["mode"]).split(" ")[0]: r for r in results}
    for mode, other, key in RATIOS:
        if mode in by_mode and other in by_mode:
            summary[key] = round(float(by_mode[mode]["images_per_s"])
                                 / float(by_mode[other]["images_per_s"]), 2)
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    print(title)
    print(f"machine: {results[0]['machine']}; torch {results[0]['torch']}")
    for r in results:
        print(f"  {r['mode']:<20} {r['images_per_s']:>9.2f} img/s  {r['ms_per_step']:>9.1f} "
              f"ms/step  peak {r['peak_memory_mb']:>8.0f} MiB ({r['peak_memory_kind']})  "
              f"{r['precision']}, channels_last={r['channels_last']}")
    for mode, other, key in RATIOS:
        if key in summary:
            print(f"  speed-up {mode} / {other}: {summary[key]}x")


class TreePeak:
    """Peak RSS of a process tree, sampled from /proc (children and grandchildren included)."""

    @staticmethod
    def sample(root: int) -> float:
        total = 0
        pids = [root]
        while pids:
            pid = pids.pop()
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
                with open(f"/proc/{pid}/task/{pid}/children") as f:
                    pids.extend(int(p) for p in f.read().split())
            except (FileNotFoundError, ProcessLookupError, ValueError):
                continue
        return total / 1024


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_tree(cmd: list[str]) -> tuple[float, float, str, float]:
    """Wall seconds, peak summed RSS (MB) over the process tree, stdout and CPU seconds."""
    cpu = _children_cpu()
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        peak = 0.0
        while proc.poll() is None:
            peak = max(peak, TreePeak.sample(proc.pid))
            time.sleep(0.05)
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"command failed: {' '.join(cmd)}\n{err.read()}")
        return seconds, peak, out.read(), _children_cpu() - cpu


def time_train_step(args: Any, model: Any, groups: list[dict[str, Any]], norm: Any,
                    augment: Any, loss: Callable[..., Any], targets: list[Any],
                    reference_loss: Callable[[Any, list[Any]], Any],
                    reference_tf32: bool = False, depthwise: bool = False) -> dict[str, object]:
    """Time one mode (``args.child``) of a training step in this process: ``default`` is the
    step the training loop builds (TrainStep: uint8 batch pinned on CUDA, augmentation on the
    device, fused SGD and cuDNN autotuning on CUDA, loss read once, the loop's memory layout
    for ``depthwise``: whether the backbone/encoder has depthwise convolutions);
    ``channels_last`` / ``contiguous`` the same step in that layout; ``reference`` a
    reference-style loop on the same network (float inputs normalised on the host, unpinned
    copies, fp32, ``loss.item()`` every step). ``targets`` are the batch's targets as the loop
    gets them; ``reference_loss(output, targets_on_device)``."""
    import torch
    from torch.optim.lr_scheduler import PolynomialLR

    from histoseg_cli.core.device import resolve_device
    from histoseg_cli.core.inference.engine import autocast_dtype
    from histoseg_cli.core.training.config import channels_last_default
    from histoseg_cli.core.training.loop import determinism, make_optimizer
    from histoseg_cli.core.training.step import TrainStep

    flags = contextlib.ExitStack()  # held until the child process exits
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    default = args.child in ("default", "channels_last", "contiguous")  # the loop's step
    channels_last = (channels_last_default(device.type, args.precision, depthwise)
                     if args.child == "default" else args.child == "channels_last")
    model.to(device, memory_format=torch.channels_last if channels_last
             else torch.preserve_format).train()
    if default:  # exactly what the training loop builds
        optimizer = make_optimizer(groups, 0.01, 0.9, device)
        flags.enter_context(determinism(False, device))
    else:
        optimizer = torch.optim.SGD(groups, lr=0.01, momentum=0.9)
    scheduler = PolynomialLR(optimizer, total_iters=args.warmup + args.steps + 1, power=0.9)
    b, s = args.batch_size, args.size
    step = None
    if default:
        patches = torch.randint(0, 256, (b, s, s, 3), dtype=torch.uint8)
        if cuda:
            patches, targets = patches.pin_memory(), [t.pin_memory() for t in targets]
        net = torch.compile(model) if args.compile else model
        step = TrainStep(net, optimizer, scheduler, norm, augment, loss, device,
                         autocast_dtype(args.precision, device), channels_last)
        total = torch.zeros((), device=device)

        def one_step() -> None:
            nonlocal total
            total = total + step(patches, *targets)

        def finish() -> float:
            return float(total.item())
    else:
        if cuda:
            torch.backends.cudnn.allow_tf32 = reference_tf32
            torch.backends.cuda.matmul.allow_tf32 = reference_tf32
        images = norm(torch.randint(0, 256, (b, 3, s, s), dtype=torch.uint8))

        def one_step() -> None:
            x = images.to(device)
            value = reference_loss(model(x), [t.to(device) for t in targets])
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
            scheduler.step()
            value.item()  # the reference logs every step

        def finish() -> float:
            return 0.0

    seconds, peak = time_steps(one_step, finish, str(device), args.warmup, args.steps)
    return {"mode": args.child + (" (compiled)" if default and args.compile else "")
            + (f" ({args.precision})" if default and args.precision != "auto" else ""),
            "images_per_s": round(args.steps * b / seconds, 3),
            "ms_per_step": round(1000 * seconds / args.steps, 1),
            "peak_memory_mb": round(peak / 2**20, 1),
            "peak_memory_kind": "GPU allocated" if cuda else "process RSS",
            "precision": "bf16" if step is not None and step.dtype else "fp32",
            "channels_last": channels_last, "machine": machine(str(device)),
            "torch": torch.__version__}


def step_arguments(description: str) -> argparse.ArgumentParser:
    """The arguments every training-step benchmark takes (the script adds its network's)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--size", type=int, default=224, help="patch side in pixels")
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--steps", type=int, default=20, help="timed steps per mode")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--modes", default="default,reference",
                   help="comma-separated: default, channels_last / contiguous (the default "
                   "step in that memory layout), reference")
    p.add_argument("--compile", action="store_true", help="torch.compile the default path")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="precision of the default path (auto: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    return p


def step_main(script: str, args: argparse.Namespace, argv: list[str] | None,
              run_child: Callable[[argparse.Namespace], dict[str, object]], title: str) -> None:
    """A training-step benchmark's entry: as a child, time one mode and print it; else run
    every mode in its own process and report them."""
    if args.child:
        print(json.dumps(run_child(args)))
        return
    results = run_modes(script, sys.argv[1:] if argv is None else argv, args.modes)
    report(f"{title}, {args.size} px, batch {args.batch_size}, {args.steps} timed steps after "
           f"{args.warmup} warm-up", results, args.json,
           {k: v for k, v in vars(args).items() if k not in ("child", "json")})


def parse_cached(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, Any]:
    """Add ``--cache`` (where built slides and random-weight checkpoints are kept between
    runs), parse, set torch's CPU threads (``--threads``) and resolve ``--device``."""
    import torch

    from histoseg_cli.core.device import resolve_device

    parser.add_argument("--cache", type=Path,
                        default=Path(tempfile.gettempdir()) / "histoseg-bench")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.cache.mkdir(parents=True, exist_ok=True)
    return args, resolve_device(args.device)

