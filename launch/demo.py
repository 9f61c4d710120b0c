"""The main job: ``python -m launch.demo [--fresh] [--algorithm grpo] [--profile ci]`` (``make demo``)."""

import sys

from megatron_tulu.pipeline import main

if __name__ == "__main__":
    sys.exit(main())
