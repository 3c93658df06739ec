"""The FLOP/s peak a benchmark's "fraction of peak" divides by.

Two numbers, both kept in the bench's JSON:

- **theoretical**: from the hardware's description. CPU: physical cores x FLOP per cycle per core x
  the highest clock the OS reports, where FLOP per cycle = FMA units x vector lanes x 2 (a fused
  multiply-add is two FLOPs), the lanes from the widest vector extension in the CPU flags
  (avx512f: 16 fp32 lanes, avx/avx2: 8, sse or NEON: 4) and the FMA units taken as 2, the most
  any x86 core issues per cycle (Skylake-SP to Sapphire Rapids with two 512-bit ports, Zen 4/5),
  so the figure is an upper bound. bf16: with ``avx512_bf16`` (VDPBF16PS: two bf16 products per
  fp32 lane) twice the fp32 rate; with AMX (``amx_bf16``) 1024 FLOP per cycle per core (Intel:
  16x AVX-512 fp32); without either, oneDNN converts bf16 to fp32 and the fp32 rate is the limit.
  GPU: SMs x dense bf16 tensor-core FLOP per cycle per SM (by compute capability, see
  :data:`GPU_BF16_FLOP_PER_CYCLE_PER_SM`) x the maximum SM clock (``nvidia-smi``).
- **measured**: the best of a few large GEMMs and a convolution in the same dtype (best of
  several repetitions), on the threads the bench uses.

The bench divides by the larger of the two (``used``), so that no workload, the probe's own GEMMs
included, shows more than 100%: a theoretical figure at a nominal clock below the turbo clock (a
VM's ``@ 2.80GHz``) is then replaced by what the machine showed it can do, and the JSON says
which one was used.

The first bench (before this module) divided by one 2048x2048 fp32 matmul; on 2 AVX-512 cores that
probe read about half of 2 x 2 x 16 x 2 x 2.8 GHz = 358 GFLOP/s, and ltadv's step showed 186% of
"peak".
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import torch

from ltadv.timing import Stopwatch

X86_FMA_UNITS = 2
ARM_FMA_UNITS = 4  # Neoverse V1/V2 and Apple's big cores: four 128-bit FMA pipes
AMX_BF16_FLOP_PER_CYCLE = 1024

# Dense (no sparsity) bf16 tensor-core FLOP per cycle per SM, by CUDA compute capability; with
# the SM count and maximum SM clock this gives the datasheet figures: A100 108 x 1.41 GHz x 2048
# = 312 TFLOP/s, H100 SXM 132 x 1.83 x 4096 = 989, A10 72 x 1.695 x 1024 = 125, L40S 142 x 2.52
# x 1024 = 366, B200 148 x 1.965 x 8192 = 2382. V100 (7.0) has no bf16 tensor cores: its fp16 rate.
GPU_BF16_FLOP_PER_CYCLE_PER_SM = {
    (7, 0): 1024, (7, 5): 512, (8, 0): 2048, (8, 6): 1024, (8, 7): 1024, (8, 9): 1024, (9, 0): 4096,
    (10, 0): 8192, (12, 0): 1024,
}


def cpu_flop_per_cycle(flags, dtype: str = "fp32") -> int:
    """FLOP per cycle per core for ``dtype`` (``fp32`` | ``bf16``) from a set of /proc/cpuinfo flags."""
    flags = set(flags)
    if dtype == "bf16" and "amx_bf16" in flags:
        return AMX_BF16_FLOP_PER_CYCLE
    arm = "asimd" in flags or "neon" in flags
    if "avx512f" in flags:
        lanes = 16
    elif "avx" in flags or "avx2" in flags:
        lanes = 8
    else:
        lanes = 4  # sse2 (every x86-64) or NEON
    if arm:
        per_cycle = ARM_FMA_UNITS * lanes * 2
    elif "fma" in flags or "avx512f" in flags:
        per_cycle = X86_FMA_UNITS * lanes * 2
    else:  # no FMA: one vector multiply and one vector add per cycle
        per_cycle = lanes * 2
    if dtype == "bf16" and "avx512_bf16" in flags:
        per_cycle *= 2
    return per_cycle


def cpu_peak_flops(flags, cores: int, ghz: float, dtype: str = "fp32") -> float:
    """Theoretical FLOP/s of ``cores`` physical cores at ``ghz`` (see the module docstring)."""
    return cores * cpu_flop_per_cycle(flags, dtype) * ghz * 1e9


def gpu_peak_flops(capability: tuple[int, int], sms: int, ghz: float) -> float | None:
    """Theoretical dense bf16 tensor-core FLOP/s; None for an architecture not in the table."""
    per_sm = GPU_BF16_FLOP_PER_CYCLE_PER_SM.get(tuple(capability))
    return None if per_sm is None else sms * per_sm * ghz * 1e9


def parse_cpuinfo(text: str) -> dict:
    """{"flags", "cores" (physical, among the processors listed), "ghz" (highest clock named), "model"}
    from the text of /proc/cpuinfo."""
    flags: set[str] = set()
    cores: set[tuple[str, str]] = set()
    ghz, model = 0.0, ""
    for block in text.strip().split("\n\n"):
        fields = {}
        for line in block.splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                fields[k.strip()] = v.strip()
        flags |= set((fields.get("flags") or fields.get("Features") or "").split())
        proc = fields.get("processor", str(len(cores)))
        cores.add((fields.get("physical id", "0"), fields.get("core id", proc)))
        model = fields.get("model name", model)
        m = re.search(r"@\s*([\d.]+)\s*GHz", fields.get("model name", ""))
        if m:
            ghz = max(ghz, float(m.group(1)))
        if fields.get("cpu MHz"):
            ghz = max(ghz, float(fields["cpu MHz"]) / 1000)
    return {"flags": flags, "cores": len(cores), "ghz": ghz, "model": model}


def cpu_description() -> dict:
    """This machine's CPU: flags, physical cores this process may run on, highest clock reported
    (cpufreq's maximum, else /proc/cpuinfo), model name."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"flags": set(), "cores": os.cpu_count() or 1, "ghz": 0.0, "model": ""}
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if allowed is not None:  # only the processors this process may use
        text = "\n\n".join(b for b in text.strip().split("\n\n")
                           if int(re.search(r"processor\s*:\s*(\d+)", b).group(1)) in allowed)
    desc = parse_cpuinfo(text)
    try:
        desc["ghz"] = max(desc["ghz"], int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
                                           .read_text()) / 1e6)
    except (OSError, ValueError):
        pass
    return desc


def gpu_max_sm_ghz(index: int = 0) -> float | None:
    """The GPU's maximum SM clock from ``nvidia-smi`` (None when it cannot be asked)."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", f"--id={index}", "--query-gpu=clocks.max.sm",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20)
        return float(out.stdout.strip().splitlines()[0]) / 1000
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def measured_peak(device, dtype: torch.dtype = torch.float32, reps: int = 3, sizes=(512, 1024),
                  conv_batch: int = 16) -> float:
    """Best FLOP/s of square GEMMs of ``sizes`` and a 3x3 convolution (``conv_batch`` x 256 channels x
    16 x 16, channels_last), each the best of ``reps`` calls after a warm-up."""
    device = torch.device(device)
    best = 0.0

    def probe(fn, flop):
        nonlocal best
        fn()
        for _ in range(reps):
            with Stopwatch(device) as sw:
                fn()
            best = max(best, flop / sw.seconds)

    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        probe(lambda a=a, b=b: a @ b, 2 * n**3)
    x = torch.randn(conv_batch, 256, 16, 16, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(256, 256, 3, 3, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    probe(lambda: torch.nn.functional.conv2d(x, w, padding=1), 2 * conv_batch * 256 * 16 * 16 * 256 * 9)
    return best


def peak(device, dtype: str = "fp32") -> dict:
    """{"dtype", "theoretical", "measured", "used", "source", "detail"}: see the module docstring.

    ``used`` = max(theoretical, measured) (``source`` names the larger), so no workload reads > 100%.
    """
    device = torch.device(device)
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        ghz = gpu_max_sm_ghz(device.index or 0)
        cap = (props.major, props.minor)
        theo = gpu_peak_flops(cap, props.multi_processor_count, ghz) if ghz and dtype == "bf16" else None
        detail = {"gpu": props.name, "capability": list(cap), "sms": props.multi_processor_count, "max_sm_ghz": ghz}
        measured = measured_peak(device, torch_dtype, sizes=(4096, 8192), conv_batch=256)
    else:
        cpu = cpu_description()
        cores = max(1, min(torch.get_num_threads(), cpu["cores"]))
        theo = cpu_peak_flops(cpu["flags"], cores, cpu["ghz"], dtype) if cpu["ghz"] else None
        detail = {"cpu": cpu["model"], "cores": cores, "ghz": cpu["ghz"],
                  "flop_per_cycle_per_core": cpu_flop_per_cycle(cpu["flags"], dtype),
                  "native_bf16": sorted(cpu["flags"] & {"avx512_bf16", "amx_bf16"})}
        measured = measured_peak(device, torch_dtype)
    used, source = pick_peak(theo, measured)
    return {"dtype": dtype, "theoretical": theo, "measured": measured, "used": used, "source": source,
            "detail": detail}


def pick_peak(theoretical: float | None, measured: float) -> tuple[float, str]:
    """(the larger of the two, its name): the denominator no workload can exceed."""
    if theoretical is not None and theoretical >= measured:
        return theoretical, "theoretical"
    return measured, "measured"
