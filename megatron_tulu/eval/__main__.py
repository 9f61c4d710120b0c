import sys

from megatron_tulu.eval.evaluate import main

sys.exit(main())
