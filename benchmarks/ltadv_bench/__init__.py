"""ltadv's benchmark code, kept out of the library package (installed alongside it as ``ltadv_bench``).

- :mod:`ltadv_bench.reference`: the reference-style baseline (the AT-BSL / RoBal / TRADES scripts'
  per-image PIL loader, fp32 PGD via autograd, their evaluation schedule), only ever used to compare.
- :mod:`ltadv_bench.train_eval`: ``ltadv bench`` (ltadv's training step, PGD-20 evaluation and
  AutoAttack against that baseline, same process, same model and data).
- :mod:`ltadv_bench.peak`: the hardware's FLOP/s peak (theoretical from CPU features or GPU
  architecture, and measured), the denominator of "fraction of peak".
- :mod:`ltadv_bench.gpu_check`: ``make gpu-check`` (GPU tests, benches, a 2-epoch protocol run and
  AutoAttack, all into one folder).
- :mod:`ltadv_bench.bf16_cpu`: bf16 autocast against fp32 for the attack and the training step on CPU.

Timing goes through :mod:`ltadv.timing` (one helper for the library and the benchmarks).
"""
