"""Training step, PGD-20 evaluation and AutoAttack: ltadv vs a reference-style baseline (same process).

Equivalent to ``ltadv bench``; see ltadv_bench/train_eval.py (and ltadv_bench/reference.py) for what
each side runs. Example:

    python benchmarks/bench_train_eval.py --model resnet18 --batch-size 128 --rounds 3
"""

import sys

from ltadv.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
