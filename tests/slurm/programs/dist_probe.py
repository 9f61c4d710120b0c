"""One SLURM task: derive torch.distributed env from SLURM, join a gloo group, all-reduce, write rank<R>.json."""

import datetime
import json
import os
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from megatron_tulu.parallel import env_from_slurm  # noqa: E402

derived = env_from_slurm()
os.environ.update(derived)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
t = torch.tensor([float(rank + 1)])
dist.all_reduce(t)
dist.destroy_process_group()
out = {"rank": rank, "world": world, "local_rank": int(os.environ["LOCAL_RANK"]),
       "master_addr": os.environ["MASTER_ADDR"], "master_port": int(os.environ["MASTER_PORT"]),
       "derived": sorted(derived), "procid": int(os.environ["SLURM_PROCID"]), "host": socket.gethostname(),
       "allreduce": t.item()}
Path(sys.argv[1], f"rank{rank}.json").write_text(json.dumps(out))
