"""The bench's FLOP/s peak from hardware features (issue 21 item 4): hand-computed figures, no timing."""

import pytest

from ltadv_bench.peak import cpu_flop_per_cycle, cpu_peak_flops, gpu_peak_flops, parse_cpuinfo, pick_peak

ICE_LAKE = {"fpu", "sse2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni"}  # this VM's CPU (model 106)
SAPPHIRE_RAPIDS = ICE_LAKE | {"avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}


@pytest.mark.parametrize("flags,dtype,expected", [
    (ICE_LAKE, "fp32", 64),  # 2 FMA units x 16 fp32 lanes x 2
    (ICE_LAKE, "bf16", 64),  # no native bf16: oneDNN converts to fp32, the fp32 rate is the limit
    (ICE_LAKE | {"avx512_bf16"}, "bf16", 128),  # Cooper Lake, Zen 4: VDPBF16PS, two products per lane
    (SAPPHIRE_RAPIDS, "bf16", 1024),  # AMX: 1024 bf16 FLOP per cycle per core
    (SAPPHIRE_RAPIDS, "fp32", 64),  # AMX does nothing for fp32
    ({"sse2", "avx", "avx2", "fma"}, "fp32", 32),  # Haswell .. Zen 3: 2 x 8 x 2
    ({"sse2", "avx"}, "fp32", 16),  # Sandy Bridge: no FMA, one 8-lane multiply + one add
    ({"sse2"}, "fp32", 8),
    ({"fp", "asimd"}, "fp32", 32),  # Neoverse: 4 x 128-bit FMA pipes x 4 lanes x 2
])
def test_cpu_flop_per_cycle(flags, dtype, expected):
    assert cpu_flop_per_cycle(flags, dtype) == expected


def test_cpu_peak_of_this_vm_and_of_a_workstation():
    # the example: 2 cores x 2 FMA units x 16 lanes x 2 x 2.8 GHz
    assert cpu_peak_flops(ICE_LAKE, 2, 2.8) == pytest.approx(358.4e9)
    assert cpu_peak_flops({"avx", "avx2", "fma"}, 4, 3.5) == pytest.approx(448e9)
    assert cpu_peak_flops(SAPPHIRE_RAPIDS, 8, 2.0, "bf16") == pytest.approx(16.384e12)


@pytest.mark.parametrize("cap,sms,ghz,expected", [
    ((8, 0), 108, 1.41, 311.87e12),  # A100 datasheet: 312 TFLOP/s dense bf16
    ((9, 0), 132, 1.83, 989.43e12),  # H100 SXM datasheet: 989
    ((8, 6), 72, 1.695, 124.97e12),  # A10 datasheet: 125
])
def test_gpu_bf16_peak_matches_datasheets(cap, sms, ghz, expected):
    assert gpu_peak_flops(cap, sms, ghz) == pytest.approx(expected, rel=1e-4)


def test_gpu_peak_of_an_unknown_architecture_is_none():
    assert gpu_peak_flops((6, 1), 28, 1.5) is None


CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Processor @ 2.80GHz
cpu MHz\t\t: 2793.438
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse2 avx fma avx512f

processor\t: 1
model name\t: Intel(R) Xeon(R) Processor @ 2.80GHz
cpu MHz\t\t: 3500.000
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse2 avx fma avx512f

processor\t: 2
model name\t: Intel(R) Xeon(R) Processor @ 2.80GHz
cpu MHz\t\t: 2800.000
physical id\t: 0
core id\t\t: 1
flags\t\t: fpu sse2 avx fma avx512f
"""


def test_parse_cpuinfo_counts_physical_cores_and_takes_the_highest_clock():
    d = parse_cpuinfo(CPUINFO)
    assert d["cores"] == 2  # processors 0 and 1 are hyperthreads of core 0
    assert d["ghz"] == pytest.approx(3.5)
    assert d["flags"] == {"fpu", "sse2", "avx", "fma", "avx512f"}


def test_the_larger_peak_is_used_and_named():
    assert pick_peak(358.4e9, 215e9) == (358.4e9, "theoretical")
    assert pick_peak(358.4e9, 420e9) == (420e9, "measured")  # turbo above the nominal clock
    assert pick_peak(None, 215e9) == (215e9, "measured")
