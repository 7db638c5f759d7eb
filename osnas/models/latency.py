"""Latency of the deployed (BN-folded) network, whole or one unit at a time.

Instance normalisation cannot be folded into the convolution before it (its statistics are
per sample), so every IN site stays in the deployed network while every BN disappears. To
weigh generalisation against that cost, the search needs what each candidate costs where
it sits; a whole-network difference is too noisy to resolve one IN site, so this module
also times a single *unit* (the stem, one OS block, a transition, conv5 + head) of the
folded network on its real input, captured by running the units before it.

Backends (all on the folded deployment path of `osnas.models.deploy`):

    eager        fold_bn(model), fp32, PyTorch eager
    bf16         folded, channels-last, bf16 weights and activations (CPU deployment path)
    torchscript  the folded fp32 net traced and frozen
    onnxruntime  the folded fp32 net exported to ONNX, run by an onnxruntime session
    cuda         fold_bn(model) fp32 on the GPU, timed with torch.cuda.synchronize

Timings are per call, in milliseconds. Each repeat times `number` back-to-back calls
(chosen so one repeat lasts at least `min_run_ms`: tiny units would otherwise drown in
timer resolution) and records the mean; the summary is the median over repeats and the
interquartile range as the spread. Several runners are timed interleaved (repeat r of
every runner before repeat r+1 of any, in a new random order each round), so a change of
machine load hits them alike and their differences stay meaningful on a busy machine.

The clock is wall time (`clock="wall"`, what a deployment sees) or the process's CPU time
(`clock="cpu"`): on a machine busy with other work, a single-threaded run's CPU time leaves
out the time it waited for a core, which wall time charges to whichever unit was running
(measured on a busy 2-core machine: IQR of one x0.25 OS block at 128x64 1.4 ms wall vs
0.13 ms CPU, medians alike).
CPU time sums all threads, so it needs threads=1 and a CPU backend.
"""

from __future__ import annotations

import contextlib
import gc
import io
import math
import time
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from osnas.errors import OsnasError, first_line
from osnas.models.deploy import _quiet, _spatial_mean, fold_bn, optimize_for_inference
from osnas.models.osnet import norm_sites, site_unit

LATENCY_BACKENDS = ("eager", "bf16", "torchscript", "onnxruntime", "cuda")
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
ONNX_OPSET = 18

# units in network order: each owns the normalisation sites with that unit name
UNITS: Tuple[str, ...] = tuple(dict.fromkeys(site_unit(s) for s in norm_sites()))


def unit_sites(unit: str) -> List[str]:
    """The normalisation sites a unit owns, in network order ('conv2.0' -> [conv2.0.end, conv2.0.post])."""
    if unit not in UNITS:
        raise OsnasError(f"unknown unit {unit!r}; valid units: {', '.join(UNITS)}")
    return [s for s in norm_sites() if site_unit(s) == unit]


# ----------------------------------------------------------------------------- units of the folded net
class _StemUnit(nn.Module):
    """7x7 conv (+ folded BN or IN) + ReLU, then the 3x3 max-pool: (B,3,H,W) -> (B,c0,H/4,W/4)."""

    def __init__(self, conv1):
        super().__init__()
        self.conv1 = conv1

    def forward(self, x):
        return F.max_pool2d(self.conv1(x), 3, 2, 1)


class _TransitionUnit(nn.Module):
    """Transition 1x1 conv (+ norm) + ReLU, then the 2x2 average pool when the stage downsamples."""

    def __init__(self, conv, pool: bool):
        super().__init__()
        self.conv, self.pool = conv, pool

    def forward(self, x):
        x = self.conv(x)
        return F.avg_pool2d(x, 2, 2) if self.pool else x


class _HeadUnit(nn.Module):
    """conv5 (+ norm) + ReLU, global average pool and the head: (B,c3,h,w) -> (B,D) fp32."""

    def __init__(self, conv5, head):
        super().__init__()
        self.conv5, self.head = conv5, head

    def forward(self, x):
        return self.head(_spatial_mean(self.conv5(x))).float()


def folded_units(net) -> Dict[str, nn.Module]:
    """The units of a folded `InferenceOSNet`, in network order, sharing its weights.

    Applying them in order to the converted input (channels-last / bf16 as the net does)
    gives the net's output; the pooling between units belongs to the unit before it.
    """
    units = {"stem": _StemUnit(net.conv1)}
    blocks = {f"{stage}.{i}": net.blocks[2 * k + i] for k, stage in enumerate(("conv2", "conv3", "conv4"))
              for i in range(2)}
    units.update({u: blocks[u] for u in ("conv2.0", "conv2.1")})
    units["pool2"] = _TransitionUnit(net.pool2, True)
    units.update({u: blocks[u] for u in ("conv3.0", "conv3.1")})
    units["pool3"] = _TransitionUnit(net.pool3, net.last_stride == 2)
    units.update({u: blocks[u] for u in ("conv4.0", "conv4.1")})
    units["conv5"] = _HeadUnit(net.conv5, net.head)
    assert tuple(units) == UNITS
    for m in units.values():
        m.eval()
    return units


def unit_inputs(units: Dict[str, nn.Module], x: torch.Tensor) -> Dict[str, torch.Tensor]:
    """The input each unit sees when `x` (already converted) runs through all of them in order."""
    out = {}
    with torch.no_grad():  # not inference_mode: the tensors may be traced or exported afterwards
        for name, m in units.items():
            out[name] = x
            x = m(x)
    return out


# ----------------------------------------------------------------------------- backends
class Prepared:
    """A model on one backend's deployment path: the folded net, its input conversion, its device."""

    def __init__(self, net, backend: str, device: torch.device, convert: Callable, sync: Callable[[], None]):
        self.net, self.backend, self.device, self.convert, self.sync = net, backend, device, convert, sync

    def units(self) -> Dict[str, nn.Module]:
        return folded_units(self.net)


def _no_sync():
    return None


def check_backend(backend: str, device: Optional[str] = None) -> torch.device:
    """The device a backend runs on; one-line OsnasError for an unknown backend or missing CUDA."""
    if backend not in LATENCY_BACKENDS:
        raise OsnasError(f"unknown latency backend {backend!r}; expected one of {', '.join(LATENCY_BACKENDS)}")
    if backend == "cuda":
        if not torch.cuda.is_available():
            raise OsnasError("backend cuda: CUDA is not available on this machine (use eager, bf16, torchscript "
                             "or onnxruntime)")
        try:
            dev = torch.device(device or "cuda")
        except RuntimeError:
            raise OsnasError(f"unknown device {device!r}; expected cuda or cuda:N") from None
        if dev.type != "cuda":
            raise OsnasError(f"backend cuda runs on a GPU; device {device!r} is not one (expected cuda or cuda:N)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise OsnasError(f"device {device!r}: this machine has {torch.cuda.device_count()} GPU(s)")
        return dev
    if device not in (None, "", "auto", "cpu"):
        raise OsnasError(f"backend {backend} runs on the CPU; device {device!r} is only for backend cuda")
    if backend == "onnxruntime":
        import importlib.util

        if importlib.util.find_spec("onnxruntime") is None:
            raise OsnasError("backend onnxruntime: the onnxruntime package is not installed "
                             "(pip install onnxruntime)")
    return torch.device("cpu")


def prepare(model, backend: str, device: Optional[str] = None) -> Prepared:
    """Fold `model` (an osnas OSNet holding one op per site) for `backend`; the model is untouched."""
    dev = check_backend(backend, device)
    if backend == "bf16":
        # the project's CPU bf16 deployment path: channels-last, bf16 conv weights and activations
        net = optimize_for_inference(model, channels_last=True, bf16=True, backend="eager").net

        def convert(x):
            return x.contiguous(memory_format=torch.channels_last).to(torch.bfloat16)

        return Prepared(net, backend, dev, convert, _no_sync)
    net = fold_bn(model, export=backend == "onnxruntime").eval()
    for p in net.parameters():
        p.requires_grad_(False)
    if backend == "cuda":
        net = net.to(dev)
        return Prepared(net, backend, dev, lambda x: x.to(dev), lambda: torch.cuda.synchronize(dev))
    return Prepared(net, backend, dev, lambda x: x, _no_sync)


def _onnx_session(module: nn.Module, example: torch.Tensor, threads: int):
    """An onnxruntime CPU session of `module` exported (TorchScript-based exporter) at `example`'s shape."""
    import onnxruntime as ort

    buf = io.BytesIO()
    errors = []
    for dynamo in (False, True):
        try:
            with _quiet(), torch.no_grad():
                kw = dict(external_data=False) if dynamo else {}
                torch.onnx.export(module, (example,), buf, input_names=["x"], output_names=["y"],
                                  opset_version=ONNX_OPSET, dynamo=dynamo, **kw)
            break
        except Exception as e:  # noqa: BLE001 - try the other exporter; report both if both fail
            errors.append(f"{'dynamo' if dynamo else 'torchscript'} exporter: {first_line(e)[:200]}")
            buf = io.BytesIO()
    else:
        raise OsnasError(f"backend onnxruntime: ONNX export failed ({'; '.join(errors)})")
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)  # 0 = onnxruntime's default (one per physical core)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])


def make_runner(module: nn.Module, example: torch.Tensor, backend: str, threads: int = 0) -> Callable[[], object]:
    """A zero-argument callable that runs `module` on `example` the way `backend` deploys it."""
    if backend == "onnxruntime":
        sess = _onnx_session(module, example, threads)
        feed = {sess.get_inputs()[0].name: np.ascontiguousarray(example.detach().cpu().numpy())}
        return lambda: sess.run(None, feed)
    if backend == "torchscript":
        with _quiet(), torch.inference_mode(False), torch.no_grad():
            ts = torch.jit.freeze(torch.jit.trace(module, example, check_trace=False).eval())
        with torch.inference_mode():
            for _ in range(2):  # the profiling executor specialises the graph on its first runs
                ts(example)
        return lambda: ts(example)
    return lambda: module(example)


# ----------------------------------------------------------------------------- timing
@contextlib.contextmanager
def torch_threads(threads: int):
    """torch's intra-op thread count set to `threads` (0 = leave the default), restored afterwards."""
    before = torch.get_num_threads()
    if threads < 0:
        raise OsnasError(f"threads must be >= 0 (0 = the default), got {threads}")
    try:
        if threads:
            torch.set_num_threads(int(threads))
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def summarize(times_ms: List[float]) -> dict:
    """median, quartiles and IQR of per-call times (ms)."""
    a = np.asarray(times_ms, dtype=np.float64)
    p25, med, p75 = (float(v) for v in np.percentile(a, [25, 50, 75]))
    return {"median_ms": med, "p25_ms": p25, "p75_ms": p75, "iqr_ms": p75 - p25,
            "times_ms": [float(t) for t in a]}


def median_se(iqr: float, n: int) -> float:
    """Standard error of a median of n timings from their spread: 1.2533 sigma / sqrt(n), with
    sigma = IQR / 1.349 (normal theory; the IQR keeps a few slow outliers from inflating it)."""
    return 1.2533 * (iqr / 1.349) / n ** 0.5


def time_interleaved(runners: Dict[str, Callable[[], object]], repeats: int = 30, warmup: int = 5,
                     sync: Callable[[], None] = _no_sync, min_run_ms: float = 2.0,
                     progress=None, clock: str = "wall") -> Dict[str, List[float]]:
    """Per-call times (ms) of each runner: `repeats` rounds, every runner once per round, in a
    shuffled order (fixed seed).

    Each runner first runs `warmup` times, then once more to choose its `number` of calls
    per repeat (so a repeat lasts >= min_run_ms). The garbage collector is paused while
    timing (a collection inside one repeat would be charged to whichever runner it hit).
    `progress.update(1)` is called after each round. `clock`: wall | cpu (see the module docstring).
    """
    if repeats < 1:
        raise OsnasError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise OsnasError(f"warmup must be >= 0, got {warmup}")
    if clock not in CLOCKS:
        raise OsnasError(f"unknown clock {clock!r}; expected one of {', '.join(CLOCKS)}")
    now = CLOCKS[clock]
    numbers = {}
    times: Dict[str, List[float]] = {k: [] for k in runners}
    gc.collect()
    gc_was = gc.isenabled()
    gc.disable()
    try:
        with torch.inference_mode():
            for k, fn in runners.items():
                for _ in range(warmup):
                    fn()
                sync()
                t0 = now()
                fn()
                sync()
                one_ms = (now() - t0) * 1e3
                numbers[k] = max(1, math.ceil(min_run_ms / max(one_ms, 1e-3)))
            order = list(runners)
            rng = np.random.default_rng(0)
            for _ in range(repeats):
                # a new order each round: a periodic disturbance (another process's time slice)
                # would otherwise alias onto the same runners round after round
                for k in [order[i] for i in rng.permutation(len(order))]:
                    fn, n = runners[k], numbers[k]
                    sync()
                    t0 = now()
                    for _ in range(n):
                        fn()
                    sync()
                    times[k].append((now() - t0) * 1e3 / n)
                if progress is not None:
                    progress.update(1)
    finally:
        if gc_was:
            gc.enable()
    return times


def check_clock(clock: str, backend: str, threads: int) -> None:
    """CPU time is a latency only for one thread on the CPU; one-line OsnasError otherwise."""
    if clock not in CLOCKS:
        raise OsnasError(f"unknown clock {clock!r}; expected one of {', '.join(CLOCKS)}")
    if clock == "cpu" and (backend == "cuda" or threads != 1):
        raise OsnasError("clock cpu times one CPU thread: it needs threads=1 (--threads 1) and a CPU backend")


def check_sizes(height: int, width: int, batch: int) -> None:
    if not all(isinstance(v, int) for v in (height, width, batch)):
        raise OsnasError(f"height, width and batch must be integers, got {height!r}, {width!r}, {batch!r}")
    if height < 32 or width < 16:
        raise OsnasError(f"image size {height}x{width} too small: OSNet needs at least 32x16 (--height/--width)")
    if height > 4096 or width > 4096:
        raise OsnasError(f"image size {height}x{width} too large (at most 4096 a side)")
    if batch < 1:
        raise OsnasError(f"batch must be >= 1, got {batch}")


def example_input(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A fixed random image batch (B, 3, H, W), ImageNet-normalised scale (the values do not matter
    for timing, but a fixed seed keeps runs comparable)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, height, width, generator=g)


def measure_latency(model, backend: str = "eager", height: int = 256, width: int = 128, batch: int = 1,
                    threads: int = 0, repeats: int = 30, warmup: int = 5, unit: Optional[str] = None,
                    device: Optional[str] = None, min_run_ms: float = 2.0, clock: str = "wall") -> dict:
    """Latency of `model` (an osnas OSNet, one op per site) on `backend`'s folded deployment path.

    With `unit` (one of UNITS) only that unit is timed, on the input it receives inside the
    network. Returns {median_ms, p25_ms, p75_ms, iqr_ms, times_ms, backend, unit, threads}.
    torch's thread count is restored afterwards; onnxruntime gets `threads` intra-op threads.
    """
    check_sizes(height, width, batch)
    check_clock(clock, backend, threads)
    if unit is not None and unit not in UNITS:
        raise OsnasError(f"unknown unit {unit!r}; valid units: {', '.join(UNITS)}")
    prep = prepare(model, backend, device)
    with torch_threads(threads) as n_threads:
        x = example_input(batch, height, width).to(prep.device)
        if unit is None:
            module, example = prep.net, x  # the net converts its own input (channels-last, bf16)
        else:
            units = prep.units()
            module, example = units[unit], unit_inputs(units, prep.convert(x))[unit]
        runner = make_runner(module, example, backend, threads)
        times = time_interleaved({"run": runner}, repeats, warmup, prep.sync, min_run_ms, clock=clock)["run"]
    return {**summarize(times), "backend": backend, "unit": unit or "network", "threads": n_threads, "clock": clock}


def measure_units(models: Iterable[Tuple[nn.Module, Iterable[str]]], backend: str, height: int, width: int,
                  batch: int, threads: int = 0, repeats: int = 30, warmup: int = 5, device: Optional[str] = None,
                  min_run_ms: float = 2.0, whole: Optional[nn.Module] = None, progress=None,
                  clock: str = "wall") -> Dict[str, dict]:
    """Time chosen units of several models together (interleaved), for cost tables.

    `models` yields (model, unit names to time in it); the results are keyed
    "<model index>/<unit>", plus "whole" for the network `whole` when given. `progress`
    (an osnas.utils.Progress or None) advances once per model prepared and once per round.
    """
    check_sizes(height, width, batch)
    check_backend(backend, device)
    check_clock(clock, backend, threads)
    runners: Dict[str, Callable[[], object]] = {}
    sync = _no_sync
    with torch_threads(threads):
        x = example_input(batch, height, width)
        for i, (model, wanted) in enumerate(models):
            prep = prepare(model, backend, device)
            sync = prep.sync
            units = prep.units()
            inputs = unit_inputs(units, prep.convert(x.to(prep.device)))
            for u in wanted:
                runners[f"{i}/{u}"] = make_runner(units[u], inputs[u], backend, threads)
            if progress is not None:
                progress.update(1)
        if whole is not None:
            prep = prepare(whole, backend, device)
            runners["whole"] = make_runner(prep.net, x.to(prep.device), backend, threads)
        times = time_interleaved(runners, repeats, warmup, sync, min_run_ms, progress, clock)
    return {k: summarize(v) for k, v in times.items()}


def measure_networks(nets: Dict[str, nn.Module], backend: str, height: int, width: int, batch: int = 1,
                     threads: int = 0, repeats: int = 30, clock: str = "wall") -> Dict[str, dict]:
    """Whole-network latency of several networks on one backend, timed interleaved (every
    network once per round) so that a drift of the machine's speed hits all alike; `clock`
    cpu (one thread) counts the process's CPU time, robust to other work on the machine."""
    check_sizes(height, width, batch)
    check_clock(clock, backend, threads)
    with torch_threads(threads):
        x = example_input(batch, height, width)
        runners, preps = {}, []
        for k, net in nets.items():
            preps.append(prepare(net, backend))
            runners[k] = make_runner(preps[-1].net, x.to(preps[-1].device), backend, threads)
        times = time_interleaved(runners, repeats, 5, preps[-1].sync, clock=clock)
    return {k: summarize(v) for k, v in times.items()}
