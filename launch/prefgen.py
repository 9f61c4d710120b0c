"""On-policy preference data: ``python -m launch.prefgen --config prefgen/tiny [--nproc N] [--validate-only] [overrides]``.

``--nproc N`` runs N workers (one engine each) on this machine; under SLURM each ``srun`` task is a worker.
"""

import sys

from megatron_tulu.prefgen.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
