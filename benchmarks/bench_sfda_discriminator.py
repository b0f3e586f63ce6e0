"""SFDA's conditional patch discriminator, forward + backward, side by side: IPSM's definition (the
position code broadcast and concatenated to every patch's maps, then AdaptSegNet's D) against
`ConditionalPatchDiscriminator` (the first conv split into a map part and a per-position code part).

    .venv/bin/python benchmarks/bench_sfda_discriminator.py --threads 1
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--patches", type=int, default=4, help="images per D call (B'); K*K = 9 patches each")
    p.add_argument("--size", type=int, nargs=2, default=(32, 42), metavar=("H", "W"),
                   help="patch size (a 64x128 crop cut 3x3, raised to D's 32-pixel minimum)")
    p.add_argument("--ndf", type=int, default=16)
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args(argv)
    import torch

    import dakd_core.compat  # noqa: F401
    from dakd_core.losses.sfda import ConditionalPatchDiscriminator

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    disc = ConditionalPatchDiscriminator(19, 3, ndf=args.ndf)
    maps = torch.rand(args.patches, 9, 19, *args.size, requires_grad=True)

    def concatenated():
        codes = disc.embed(torch.arange(9))[None, :, :, None, None].expand(args.patches, 9, -1, *args.size)
        x = torch.cat([maps, codes], dim=2).flatten(0, 1)
        disc.net(x).square().sum().backward()

    def split():
        disc(maps).square().sum().backward()

    def seconds(fn) -> float:
        for _ in range(2):
            fn()
        start = time.perf_counter()
        for _ in range(args.repeats):
            fn()
        return (time.perf_counter() - start) / args.repeats

    t_cat, t_split = seconds(concatenated), seconds(split)
    print(f"forward + backward, {args.patches} x 9 patches of {args.size[0]}x{args.size[1]}, ndf {args.ndf}, "
          f"{args.threads} thread(s): concatenated {1000 * t_cat:.1f} ms, split {1000 * t_split:.1f} ms, "
          f"ratio {t_cat / t_split:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
