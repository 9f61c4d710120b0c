"""Reward-model entry point: ``python -m launch.rm --config rm/tiny [--nproc N] [overrides]``."""

import sys

from megatron_tulu.cli import stage_main
from megatron_tulu.trainers.rm import RMConfig, RMTask

if __name__ == "__main__":
    sys.exit(stage_main("launch.rm", RMConfig, RMTask, "rm/tiny"))
