"""Connects to the Ray cluster at $RAY_ADDRESS and runs one task pinned to each alive node; prints JSON."""

import json
import os

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

ray.init(address=os.environ["RAY_ADDRESS"], logging_level="ERROR", log_to_driver=False)


@ray.remote(num_cpus=0)
def where() -> str:
    return ray.get_runtime_context().get_node_id()


nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
ran_on = ray.get([where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote()
                  for n in nodes], timeout=60)
print("RAY_PROBE " + json.dumps({"alive": len(nodes), "ran_on": ran_on, "nodes": nodes}), flush=True)
ray.shutdown()
