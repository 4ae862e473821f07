"""BiSeNet face-parsing inference throughput on this machine's CPU (images/s, table).

    python bench/bisenet_inference.py [--variants resnet18,tiny] [--sizes 512,256]
        [--batch 8] [--repeats 5]

For each variant and input size: the jitted eval forward pass (`model(x)`, argmax labels, the
same computation as `deepfake_jax.segment.FaceParser`) on a batch of random uint8 images,
random-initialised weights (speed does not depend on them), float32, one device. Compile time
is excluded; the rate is the median over `--repeats` timed runs. Machines are shared and
noisy: note the load average printed with the table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def measure(variant: str, size: int, batch: int, repeats: int) -> tuple[float, float]:
    """(median images/s, compile seconds)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from deepfake_jax.data import normalization
    from deepfake_jax.models.bisenet import BiSeNet

    model = BiSeNet(variant, 19, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)

    @jax.jit
    def parse(state, images):
        m = nnx.merge(graphdef, state)
        return jnp.argmax(m(normalization.normalize(images), train=False), axis=-1)

    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (batch, size, size, 3),
                                                           dtype=np.uint8))
    t0 = time.perf_counter()
    parse(state, images).block_until_ready()
    compile_s = time.perf_counter() - t0
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        parse(state, images).block_until_ready()
        rates.append(batch / (time.perf_counter() - t0))
    return statistics.median(rates), compile_s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", default="resnet18,tiny")
    p.add_argument("--sizes", default="512,256")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    import jax

    rows = []
    for variant in args.variants.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            rate, compile_s = measure(variant, size, args.batch, args.repeats)
            rows.append((variant, size, rate, compile_s))
            print(f"  {variant} {size} px: {rate:.2f} img/s", file=sys.stderr, flush=True)
    print(f"BiSeNet inference, {jax.devices()[0].platform} x{os.cpu_count()} cores, batch "
          f"{args.batch}, float32, median of {args.repeats} (load average "
          f"{os.getloadavg()[0]:.1f})")
    print(f"| {'variant':8s} | {'size':>5s} | {'images/s':>9s} | {'ms/image':>9s} | "
          f"{'compile s':>9s} |")
    print(f"|{'-' * 10}|{'-' * 7}|{'-' * 11}|{'-' * 11}|{'-' * 11}|")
    for variant, size, rate, compile_s in rows:
        print(f"| {variant:8s} | {size:5d} | {rate:9.2f} | {1000 / rate:9.1f} | "
              f"{compile_s:9.1f} |")


if __name__ == "__main__":
    main()
