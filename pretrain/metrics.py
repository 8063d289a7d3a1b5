"""Throughput and utilisation: tokens/s, MFU against a measured matmul peak, memory."""

from __future__ import annotations

import resource
import time

import psutil
import torch


def measure_matmul_peak(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, n: int = 2048,
                        seconds: float = 0.3, trials: int = 3) -> float:
    """Achieved FLOP/s of a square ``n × n`` matmul on ``device`` with this process's threads.

    Used as the default MFU peak when ``train.peak_flops`` is not set (on CPU the vendor peak is
    rarely reachable; measured here: fp32 ~123 GFLOP/s on one thread, ~235 on two).
    Returns FLOP/s (2·n³ per matmul).
    """
    dev = torch.device(device)
    g = torch.Generator(device=dev).manual_seed(0)  # never touch the global RNG (exact resume)
    a = torch.randn(n, n, device=dev, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=dev, dtype=dtype, generator=g)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    a @ b
    sync()
    best = 0.0
    for _ in range(trials):  # the best of a few trials: a busy moment only ever lowers a reading
        count, t0 = 0, time.perf_counter()
        while True:
            a @ b
            count += 1
            sync()
            dt = time.perf_counter() - t0
            if dt >= seconds and count >= 2:
                break
        best = max(best, 2 * n**3 * count / dt)
    return best


#: ``train.precision=auto`` trains in bf16 on a CPU whose bf16 matmul runs at least this many times as
#: fast as its fp32 matmul. Measured on this project's 2-core Xeon (AVX512-BF16, oneDNN): 2.3-2.7x, and
#: a whole training step 1.3x (quickstart GPT) to 1.8x (6 x 512) faster; a CPU without native bf16
#: instructions emulates it and runs it slower than fp32 (docs/performance.md, "bf16 on CPU").
BF16_MIN_MATMUL_SPEEDUP = 1.5


def bf16_matmul_speedup(device: torch.device | str = "cpu", n: int = 1024, seconds: float = 0.1,
                        rounds: int = 4) -> float:
    """How many times faster this device multiplies ``n × n`` bf16 matrices than fp32 ones (≈ 1 s).

    Each rate is the best of ``rounds`` readings of :func:`measure_matmul_peak` (this process's
    threads), the two dtypes taken in turn, so that a busy stretch of a shared machine slows readings
    of both rather than all of one. Returns bf16 FLOP/s ÷ fp32 FLOP/s.
    """
    best = {torch.bfloat16: 0.0, torch.float32: 0.0}
    for _ in range(rounds):
        for dtype in best:
            best[dtype] = max(best[dtype], measure_matmul_peak(device, dtype, n=n, seconds=seconds, trials=1))
    return best[torch.bfloat16] / best[torch.float32]


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype a model computes in under ``train.precision`` (``fp32``/``bf16``/``fp16``): the dtype
    its MFU peak is measured in."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def cpu_precision_choice(speedup: float) -> tuple[str, str]:
    """``train.precision=auto`` on a CPU whose bf16 matmul runs ``speedup`` × its fp32 matmul
    (:func:`bf16_matmul_speedup`): ``(bf16 or fp32, the reason)``; bf16 from
    :data:`BF16_MIN_MATMUL_SPEEDUP` on. One rule for the trainer and ``zerolm plan``."""
    choice = "bf16" if speedup >= BF16_MIN_MATMUL_SPEEDUP else "fp32"
    return choice, (f"this CPU's bf16 matmul runs {speedup:.2f}x its fp32 matmul "
                    f"({'>=' if choice == 'bf16' else '<'} {BF16_MIN_MATMUL_SPEEDUP:g}x)")


def mfu(flops_per_token: float, tokens_per_second_per_rank: float, peak_flops: float) -> float:
    """Model FLOPs utilisation (Chowdhery et al. 2022, Appendix B): achieved model FLOP/s of one
    rank ÷ that rank's peak FLOP/s. ``flops_per_token`` counts forward + backward (6N + 12LHQT)."""
    return flops_per_token * tokens_per_second_per_rank / peak_flops


def memory_stats(device: torch.device) -> dict[str, float]:
    """Resident memory of this process (GiB) and, on CUDA, the peak allocated (GiB)."""
    out = {"memory/rss_gib": psutil.Process().memory_info().rss / 2**30}
    if device.type == "cuda":
        out["memory/cuda_max_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def rss_bytes() -> int:
    """Resident memory of this process now (bytes)."""
    return psutil.Process().memory_info().rss


def peak_rss_bytes() -> int:
    """The largest resident memory this process has had so far (bytes; Linux ``ru_maxrss`` is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def median(values: list[float]) -> float | None:
    """The median of ``values`` (None for none)."""
    v = sorted(values)
    if not v:
        return None
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else 0.5 * (v[mid - 1] + v[mid])
