"""ALFWorld curve on CPU: the embedded model untrained → SFT warm start → RL (holder vs grpo), each stage on
the same stratified valid_unseen subset (36 games, every task type, greedy). CSV + PNG in --out; prints
per-type success with Wilson intervals. A measurement, not a test.

    python bench/alfworld_curve.py [--sft-run DIR] [--rl-steps 4] [--out bench_out/alfworld_curve]

The stages are ``python -m agent_rl.curve`` (see its docstring for every option).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent_rl.curve import main  # noqa: E402

if __name__ == "__main__":
    main()
