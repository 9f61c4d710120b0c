"""RLVR entry point: ``python -m launch.rlvr --config rlvr/tiny [--nproc N] [overrides]``."""

import sys

from megatron_tulu.cli import stage_main
from megatron_tulu.trainers.rlvr import RLVRConfig
from megatron_tulu.trainers.rlvr.loop import run_rlvr

if __name__ == "__main__":
    sys.exit(stage_main("launch.rlvr", RLVRConfig, None, "rlvr/tiny", run=run_rlvr))
