"""Pretraining entry point (LM loss on every token): ``python -m launch.pretrain --config pretrain/tiny``."""

import sys

from megatron_tulu.cli import stage_main
from megatron_tulu.trainers.sft import SFTConfig, SFTTask

if __name__ == "__main__":
    sys.exit(stage_main("launch.pretrain", SFTConfig, SFTTask, "pretrain/tiny"))
