"""SFT entry point: ``python -m launch.sft --config sft/tiny [--nproc N] [overrides]``."""

import sys

from megatron_tulu.cli import stage_main
from megatron_tulu.trainers.sft import SFTConfig, SFTTask

if __name__ == "__main__":
    sys.exit(stage_main("launch.sft", SFTConfig, SFTTask, "sft/tiny"))
