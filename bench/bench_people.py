"""Several people in one picture (experimental): the cost of two people against one.

1. One UNet call (reference pass + main pass) of the full-size UNet with random weights, fp32, on
   this machine: one person with 4 references against two people with 4 each side by side
   (`workload.people_boxes`), 2 branches (every row reads the references) and 3 (one row does), at
   512 and 768 px: seconds and peak resident memory (anonymous, sampled from /proc; the model's
   6.6 GB of weights included).
2. The reference attention of one block alone (the largest: the first decoder level, 768 px ->
   96x96 = 9216 queries, width 320, 784 tokens per reference) in the two ways of restricting each
   query to its person's references that give the same numbers: the library's (each person's
   queries gathered, attending to their own references) and one attention over all references
   with the other person's logits masked to -inf; and one person's, for scale.

    python bench/bench_people.py                      # full size, about 10 minutes on 2 cores
    python bench/bench_people.py --dim 64 --sizes 256 # quick check
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench.memory import PeakMemory, rss_anon  # noqa: E402
from bench.workload import StepInputs, people_boxes, random_unet, unet_call  # noqa: E402
from flashface.models.reference_attention import reference_attention  # noqa: E402
from flashface.models.unet import UNetConfig  # noqa: E402
from flashface.models.unet_blocks import Attention  # noqa: E402
from flashface.people import PeopleLayout  # noqa: E402

TIMESTEP = {2: 999, 3: 500}  # a step before and one after the launch of reference guidance


def model_calls(config: UNetConfig, sizes: list[int], branches_list: list[int], repeats: int) -> None:
    model = random_unet(config, torch.float32)
    baseline = rss_anon()
    print(
        f"UNet call, fp32, random weights ({sum(p.numel() for p in model.parameters()) / 1e9:.3f} G parameters, "
        f"{baseline / 2**30:.2f} GiB anonymous before the calls)"
    )
    print(f"{'px':>5}{'branches':>9}{'people':>7}{'s/call':>9}  range            peak anon GiB  vs one person")
    for size in sizes:
        for branches in branches_list:
            one_person = None
            for people in (1, 2):
                inputs = StepInputs(size, 4, 4, 1, config.context_dim, people=people)
                unet_call(model, inputs, branches, TIMESTEP[branches], 1.2)  # warm-up
                seconds = []
                with PeakMemory() as memory:
                    for _ in range(repeats):
                        start = time.perf_counter()
                        unet_call(model, inputs, branches, TIMESTEP[branches], 1.2)
                        seconds.append(time.perf_counter() - start)
                median = statistics.median(seconds)
                one_person = one_person or median
                print(
                    f"{size:>5}{branches:>9}{people:>7}{median:9.2f}  [{min(seconds):.2f}-{max(seconds):.2f}]"
                    f"{memory.peak_anon / 2**30:>17.2f}  {median / one_person:.2f}x",
                    flush=True,
                )


def masked_attention(sa1: Attention, y, references, owners, regions) -> torch.Tensor:
    """One attention over [y; every reference], other people's reference logits at -inf."""
    ref_tokens = references.reshape(1, -1, references.shape[-1]).expand(y.shape[0], -1, -1)
    key_owner = torch.tensor([owner for owner in owners for _ in range(references.shape[1])])
    allowed = torch.cat(
        [
            torch.ones(len(regions), y.shape[1], dtype=torch.bool),
            (regions[:, None] == key_owner[None, :]) | (regions[:, None] < 0),
        ],
        1,
    )
    bias = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))
    q, k, v = sa1.to_q(y), sa1.to_k(torch.cat([y, ref_tokens], 1)), sa1.to_v(torch.cat([y, ref_tokens], 1))
    return sa1.attend(q, k, v, bias[None, None])


def attention_block(size: int, repeats: int) -> None:
    side, width, ref_side = size // 8, 320, 28
    torch.manual_seed(0)
    sa1 = Attention(torch.nn, width, width, 8).eval()
    y = torch.randn(1, side * side, width)
    references = torch.randn(8, ref_side * ref_side, width)
    layout = PeopleLayout(tuple(people_boxes(2)), (None, None), (4, 4))
    regions = layout.regions(size, size)
    assert regions is not None  # two people
    regions = regions.flatten()
    positions = [(regions == person).nonzero().flatten() for person in range(2)]
    weights = [1.0]
    ways = {
        "two people, queries gathered per person (library)": lambda: reference_attention(
            sa1, y, references, weights, None, layout.owners, positions
        ),
        "two people, one attention with masked logits": lambda: masked_attention(
            sa1, y, references, layout.owners, regions
        ),
        "one person, 4 references (today)": lambda: reference_attention(sa1, y, references[:4], weights),
    }
    print(
        f"\nreference attention of one block at {size} px: {side * side} queries, width {width}, "
        f"{ref_side * ref_side} tokens per reference, 1 row"
    )
    results = {}
    for name, run in ways.items():
        run()
        seconds = []
        with PeakMemory() as memory:
            before = rss_anon()
            for _ in range(repeats):
                start = time.perf_counter()
                results[name] = run()
                seconds.append(time.perf_counter() - start)
        print(
            f"  {name:<52} {statistics.median(seconds):7.3f} s  [{min(seconds):.3f}-{max(seconds):.3f}]  "
            f"+{(memory.peak_anon - before) / 2**20:6.0f} MiB",
            flush=True,
        )
    library, masked = list(results.values())[:2]
    print(f"  the two ways differ by at most {float((library - masked).abs().max()):.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=320, help="UNet base width (320 = SD1.5)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 768])
    parser.add_argument("--branches", type=int, nargs="+", default=[3, 2], choices=[2, 3])
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per figure (after one warm-up)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    attention_block(max(args.sizes), max(args.repeats, 3))
    model_calls(UNetConfig(dim=args.dim), args.sizes, args.branches, args.repeats)


if __name__ == "__main__":
    main()
