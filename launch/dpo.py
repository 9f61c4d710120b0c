"""DPO entry point: ``python -m launch.dpo --config dpo/tiny [--nproc N] [overrides]``."""

import sys

from megatron_tulu.cli import stage_main
from megatron_tulu.trainers.dpo import DPOConfig, DPOTask

if __name__ == "__main__":
    sys.exit(stage_main("launch.dpo", DPOConfig, DPOTask, "dpo/tiny"))
