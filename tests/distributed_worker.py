"""One of two processes of tests/test_sharding.py's multi-process run: ``jax.distributed`` on
localhost (CPU, gloo collectives), 2 forced host devices each, a 2 x 2 mesh over all 4; greedy
decoding of the sharding worker's prompts. Prints the tokens as JSON."""

import json
import os
import sys

from sharding_worker import CFG, PROMPTS

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"  # after sharding_worker's 4

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")

import specdec  # noqa: E402
from specdec import drafters, sharding  # noqa: E402
from specdec.models import Model  # noqa: E402


def main(process_id: int, port: int):
    sharding.initialize_distributed(f"localhost:{port}", 2, process_id)
    mesh = sharding.make_mesh(2, 2)
    target = Model.random(CFG, seed=0).shard(mesh)
    out = {}
    for name, options in [(None, {}), ("layer_skip", dict(skip=[1]))]:
        drafter = drafters.make(name, target, **options)
        result = specdec.generate(
            target, PROMPTS, drafter=drafter, gamma=3, max_new_tokens=10, chat=False, eos_ids=()
        )
        out[str(name)] = result.tokens
    print(json.dumps(dict(processes=jax.process_count(), devices=len(jax.devices()), tokens=out)))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
