"""The machine a plan is for: this one, detected and calibrated, or a named profile of a common cloud instance.

Detection reads cores and RAM (psutil) and GPUs with their memory (torch.cuda, which asks NVML/the driver). The
calibration times a few matmuls at the widths models use, so time estimates rest on what this machine does today
(a shared machine is slower than its datasheet), and caches the result under $SLINGSHOT_HOME (default
~/.cache/slingshot) so that later plans cost nothing.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from slingshot.errors import RecipeError

# Square matmul sizes timed by the calibration: the widths of the catalogue's models run from 384 to 5,120, and a
# CPU's GFLOP/s grow with size, so a model is timed at its own width by interpolation rather than at one size.
CALIBRATION_SIZES = (256, 512, 1024, 2048)
CALIBRATION_VERSION = 2  # bump when the calibration changes, so old caches are not trusted


@dataclass(frozen=True)
class Hardware:
    """What a plan needs to know about a machine. Memory in MiB, throughput in GFLOP/s, price in USD per hour."""

    name: str
    device: str  # "cpu" or "cuda"
    cores: int
    ram_mb: float
    accelerator: str | None = None  # e.g. "NVIDIA A10G"
    accelerator_memory_mb: float | None = None
    fast_bf16: bool = False
    # GFLOP/s of a square matmul of each size, per precision: {"fp32": {256: 40.0, ...}, "bf16": {...}}
    matmul_gflops: dict[str, dict[int, float]] = field(default_factory=dict)
    memory_bandwidth_gb_s: float | None = None
    price_per_hour_usd: float = 0.0
    price_source: str = ""
    measured: bool = False  # True: calibrated on this machine; False: datasheet figures of a named profile
    notes: str = ""

    @property
    def memory_limit_mb(self) -> float:
        """The memory a training run must fit in: the GPU's when training on one, else the RAM."""
        return self.accelerator_memory_mb if self.device == "cuda" and self.accelerator_memory_mb else self.ram_mb

    def gflops_at(self, width: int, precision: str) -> float:
        """Matmul GFLOP/s at a model width, interpolated (log-linear) between calibrated sizes, clamped at the ends."""
        table = self.matmul_gflops.get(precision) or self.matmul_gflops["fp32"]
        sizes = sorted(table)
        if width <= sizes[0]:
            return table[sizes[0]]
        if width >= sizes[-1]:
            return table[sizes[-1]]
        for low, high in itertools.pairwise(sizes):
            if low <= width <= high:
                share = (math.log(width) - math.log(low)) / (math.log(high) - math.log(low))
                return table[low] + share * (table[high] - table[low])
        return table[sizes[-1]]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["matmul_gflops"] = {p: {str(k): v for k, v in t.items()} for p, t in self.matmul_gflops.items()}
        return data


def _flat(gflops: float) -> dict[int, float]:
    return {size: gflops for size in CALIBRATION_SIZES}


# Named profiles for planning a run elsewhere. GPU throughput is the datasheet's dense tensor-core peak (no
# sparsity) in the precision the GPU trains in; memory is the card's; prices are on-demand list prices in
# us-east-1 (AWS) as published in 2024-2025 for the instance named, or the cloud named. Prices change: override them
# in the recipe (plan.price_per_hour_usd) with what you pay. A profile's figures are datasheet, not measured.
PROFILES: dict[str, Hardware] = {
    "cpu-2core": Hardware(
        "cpu-2core", "cpu", 2, 8 * 1024, matmul_gflops={"fp32": {256: 60.0, 512: 110.0, 1024: 150.0, 2048: 180.0}},
        memory_bandwidth_gb_s=10.0, price_per_hour_usd=0.1008, price_source="AWS m7i.large (2 vCPU, 8 GiB), on demand",
        notes="throughput: fp32 matmuls measured on a 2-core Xeon with AVX512 (FINDINGS.md: 100-191 GFLOP/s at 2048)"),
    "cpu-8core": Hardware(
        "cpu-8core", "cpu", 8, 32 * 1024, matmul_gflops={"fp32": {256: 240.0, 512: 440.0, 1024: 600.0, 2048: 720.0}},
        memory_bandwidth_gb_s=30.0, price_per_hour_usd=0.4032, price_source="AWS m7i.2xlarge (8 vCPU, 32 GiB), on demand",
        notes="throughput: the 2-core figures x 4 (matmuls scale with cores); not measured"),
    "t4-16gb": Hardware(
        "t4-16gb", "cuda", 4, 16 * 1024, "NVIDIA T4", 15 * 1024, fast_bf16=False,
        matmul_gflops={"fp32": _flat(8_100.0), "fp16": _flat(65_000.0)}, memory_bandwidth_gb_s=320.0,
        price_per_hour_usd=0.526, price_source="AWS g4dn.xlarge, on demand",
        notes="T4 datasheet: 65 TFLOPS fp16 tensor, 8.1 TFLOPS fp32; no bf16 (trains in fp16 or fp32)"),
    "l4-24gb": Hardware(
        "l4-24gb", "cuda", 4, 16 * 1024, "NVIDIA L4", 22.5 * 1024, fast_bf16=True,
        matmul_gflops={"fp32": _flat(30_300.0), "bf16": _flat(121_000.0)}, memory_bandwidth_gb_s=300.0,
        price_per_hour_usd=0.8048, price_source="AWS g6.xlarge, on demand",
        notes="L4 datasheet: 121 TFLOPS bf16 dense (242 with sparsity), 30.3 TFLOPS fp32"),
    "a10g-24gb": Hardware(
        "a10g-24gb", "cuda", 4, 16 * 1024, "NVIDIA A10G", 22.5 * 1024, fast_bf16=True,
        matmul_gflops={"fp32": _flat(31_200.0), "bf16": _flat(125_000.0)}, memory_bandwidth_gb_s=600.0,
        price_per_hour_usd=1.006, price_source="AWS g5.xlarge, on demand",
        notes="NVIDIA A10 datasheet: 125 TFLOPS bf16 dense, 31.2 TFLOPS fp32; AWS publishes no separate A10G figure, so treat it as an upper bound"),
    "a100-40gb": Hardware(
        "a100-40gb", "cuda", 12, 85 * 1024, "NVIDIA A100 40GB", 39.5 * 1024, fast_bf16=True,
        matmul_gflops={"fp32": _flat(19_500.0), "bf16": _flat(312_000.0)}, memory_bandwidth_gb_s=1555.0,
        price_per_hour_usd=3.67, price_source="Google Cloud a2-highgpu-1g, on demand",
        notes="A100 datasheet: 312 TFLOPS bf16 dense, 19.5 TFLOPS fp32 (156 with TF32)"),
    "a100-80gb": Hardware(
        "a100-80gb", "cuda", 12, 170 * 1024, "NVIDIA A100 80GB", 79.2 * 1024, fast_bf16=True,
        matmul_gflops={"fp32": _flat(19_500.0), "bf16": _flat(312_000.0)}, memory_bandwidth_gb_s=2039.0,
        price_per_hour_usd=5.07, price_source="Google Cloud a2-ultragpu-1g, on demand",
        notes="A100 80GB SXM datasheet: 312 TFLOPS bf16 dense"),
    "h100-80gb": Hardware(
        "h100-80gb", "cuda", 26, 234 * 1024, "NVIDIA H100 80GB", 79.2 * 1024, fast_bf16=True,
        matmul_gflops={"fp32": _flat(67_000.0), "bf16": _flat(989_000.0)}, memory_bandwidth_gb_s=3350.0,
        price_per_hour_usd=11.06, price_source="Google Cloud a3-highgpu-1g, on demand",
        notes="H100 SXM datasheet: 989 TFLOPS bf16 dense, 67 TFLOPS fp32"),
}


def get_hardware(name: str | None = "auto", calibrate: bool = True, threads: int | None = None) -> Hardware:
    """`auto` (or None): this machine, detected and calibrated with `threads` (default: physical cores, as
    train.py); otherwise a named profile. Raises RecipeError for an unknown name."""
    if name in (None, "auto", "local", "this"):
        return detect_hardware(calibrate=calibrate, threads=threads)
    key = name.lower()
    if key not in PROFILES:
        import difflib

        close = difflib.get_close_matches(key, list(PROFILES), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise RecipeError(f"unknown hardware '{name}'", f"{hint}use auto (this machine) or one of: {', '.join(PROFILES)}")
    return PROFILES[key]


def detect_hardware(calibrate: bool = True, threads: int | None = None) -> Hardware:
    """This machine: cores, RAM, the first GPU and its memory, bf16 support, and (cached) calibrated throughput
    with `threads` CPU threads (default: the physical cores, as train.py uses)."""
    import psutil
    import torch

    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    ram_mb = psutil.virtual_memory().total / 2**20
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        device, accelerator, accelerator_mb = "cuda", properties.name, properties.total_memory / 2**20
        fast_bf16 = torch.cuda.is_bf16_supported()
    else:
        from slingshot.train import cpu_has_fast_bf16

        device, accelerator, accelerator_mb, fast_bf16 = "cpu", None, None, cpu_has_fast_bf16()
    name = accelerator or f"this machine ({cores} cores)"
    calibration = load_or_run_calibration(device, fast_bf16, threads or cores) if calibrate else {}
    return Hardware(
        name=name, device=device, cores=cores, ram_mb=round(ram_mb, 1), accelerator=accelerator,
        accelerator_memory_mb=round(accelerator_mb, 1) if accelerator_mb else None, fast_bf16=fast_bf16,
        matmul_gflops=calibration.get("matmul_gflops", {}),
        memory_bandwidth_gb_s=calibration.get("memory_bandwidth_gb_s"), measured=bool(calibration),
        notes=f"calibrated {calibration['when']}" if calibration else "not calibrated",
    )


# ------------------------------------------------------------------------------------------------ calibration


def calibration_key(device: str, threads: int) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    accelerator = torch.cuda.get_device_name(0) if device == "cuda" else ""
    return f"v{CALIBRATION_VERSION}|{device}|{accelerator or cpu}|{threads} threads|torch {torch.__version__}"


def load_or_run_calibration(device: str, fast_bf16: bool, threads: int, refresh: bool = False) -> dict:
    """Calibration figures for this machine and thread count from the cache, or measured now (a few seconds)
    and cached. refresh=True measures again (the speed of a shared machine changes with its load)."""
    from slingshot.llm import slingshot_home

    path = slingshot_home() / "calibration.json"
    key = calibration_key(device, threads)
    cache: dict = {}
    if path.is_file():
        try:
            cache = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            cache = {}
    if not refresh and key in cache:
        entry = cache[key]
        entry["matmul_gflops"] = {p: {int(k): v for k, v in t.items()} for p, t in entry["matmul_gflops"].items()}
        return entry
    entry = run_calibration(device, fast_bf16, threads)
    cache[key] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cache, indent=2), encoding="utf-8")
    os.replace(tmp, path)
    return entry


def run_calibration(device: str, fast_bf16: bool, threads: int) -> dict:
    """Median GFLOP/s of square matmuls at CALIBRATION_SIZES (fp32, and bf16 where fast) and a copy bandwidth.
    Caps the kernel caches first: in `slingshot run` these can be the first matmuls of the process that trains."""
    import torch

    from slingshot.train import limit_kernel_caches

    limit_kernel_caches()

    precisions = {"fp32": torch.float32}
    if fast_bf16:
        precisions["bf16"] = torch.bfloat16
    previous_threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(threads)
    try:
        gflops = {name: {size: round(_matmul_gflops(size, dtype, device), 1) for size in CALIBRATION_SIZES}
                  for name, dtype in precisions.items()}
        bandwidth = round(_copy_bandwidth_gb_s(device), 1)
    finally:
        torch.set_num_threads(previous_threads)
    return {"matmul_gflops": gflops, "memory_bandwidth_gb_s": bandwidth,
            "when": time.strftime("%Y-%m-%d %H:%M"), "load_average_1m": round(os.getloadavg()[0], 2)}


def _matmul_gflops(size: int, dtype, device: str, budget_s: float = 0.5) -> float:
    """Median GFLOP/s of repeated square matmuls. The median, not the best: a training run lasts minutes and meets
    the machine as it usually is, and on a shared machine its best moment is far faster than its usual one."""
    import statistics

    import torch

    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    torch.mm(a, b)  # warm-up: the first call pays for allocation and kernel selection
    timings: list[float] = []
    start = time.perf_counter()
    while len(timings) < 3 or (time.perf_counter() - start < budget_s and len(timings) < 25):
        began = time.perf_counter()
        torch.mm(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - began)
    return 2 * size**3 / statistics.median(timings) / 1e9


def _copy_bandwidth_gb_s(device: str, megabytes: int = 64) -> float:
    """Bytes read plus written per second by a large tensor copy: what an optimizer step is bound by."""
    import torch

    source = torch.ones(megabytes * 2**20 // 4, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    timings = []
    for _ in range(5):
        began = time.perf_counter()
        target.copy_(source)
        if device == "cuda":
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - began)
    median = sorted(timings)[len(timings) // 2]
    return 2 * source.numel() * 4 / median / 1e9
