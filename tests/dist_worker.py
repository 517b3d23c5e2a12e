"""Run under torchrun by test_distributed.py: a tiny sharded stage over 11 items."""

import json
import sys

from stages.core import distributed
from stages.core.artifacts import atomic_write_text, open_artifact, run_items

out = sys.argv[1]
info = distributed.init_distributed("cpu")
items = [f"item{i:02d}" for i in range(11)]
with open_artifact(out, kind="metrics", stage="dist-test", params={"n": len(items)}) as art:
    if not art.up_to_date:
        run_items(
            art,
            items,
            done=lambda i: art.has(f"items/{i}.json"),
            work=lambda i: atomic_write_text(art.file(f"items/{i}.json"), json.dumps({"rank": info.rank})),
        )
        counts = distributed.all_gather_objects(len(distributed.shard(items, info)), info)
        art.finish(outputs={"per_rank": counts})
distributed.cleanup()
