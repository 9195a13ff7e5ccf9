"""Seconds to tokenize a prompt: ours (`bpe_merge`, O(n log n) per word, only the kept tokens)
against the official algorithm (open_clip's SimpleTokenizer.bpe, quadratic per word), on unbroken
words of growing length and on an ordinary prompt. Also checks the two give the same ids.

    python bench/bench_tokenizer.py                       # up to 20,000 characters for the official
    python bench/bench_tokenizer.py --official-max 40000  # the official run then takes about a minute
"""

from __future__ import annotations

import argparse
import os
import random
import string
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench.memory import PeakMemory  # noqa: E402
from flashface.models.clip_text import END_TOKEN, START_TOKEN, Tokenizer  # noqa: E402

LENGTHS = (1_000, 5_000, 20_000, 40_000)
PROMPT = "A handsome young man, with long brown hair, on the street in the night, soft light, best quality"


def official_ids(tokenizer, byte_chars, text: str, context_length: int = 77) -> list[int]:
    """The official tokenizer's ids, with open_clip's quadratic BPE doing the merges."""
    ids = []
    for piece in Tokenizer._PIECES.findall(Tokenizer.clean(text)):
        merged = tokenizer.bpe("".join(byte_chars[b] for b in piece.encode("utf-8")))
        ids.extend(tokenizer.encoder[token] for token in merged.split(" "))
    row = [START_TOKEN, *ids[: context_length - 2], END_TOKEN]
    return row + [END_TOKEN] * (context_length - len(row))


def timed(function, *args) -> tuple[float, object]:
    started = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - started, result


def unbroken_word(length: int) -> str:
    """Random letters without a space (seeded): many different merges, the official worst case."""
    generator = random.Random(length)
    return "".join(generator.choice(string.ascii_lowercase) for _ in range(length))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--official-max", type=int, default=20_000, help="longest word the official algorithm is timed on"
    )
    args = parser.parse_args()
    from open_clip.tokenizer import SimpleTokenizer, bytes_to_unicode

    ours, official, byte_chars = Tokenizer(), SimpleTokenizer(), bytes_to_unicode()
    ours([PROMPT])  # loads the vocabulary once
    for name, text in [("prompt", PROMPT)] + [(f"{n:,} chars, no space", unbroken_word(n)) for n in LENGTHS]:
        with PeakMemory() as memory:
            seconds, ids = timed(lambda t: ours([t])[0].tolist(), text)
        line = f"{name:>24}: ours {seconds:7.3f} s ({memory})"
        if len(text) <= args.official_max:
            official_seconds, expected = timed(official_ids, official, byte_chars, text)
            line += f", official {official_seconds:7.2f} s, same ids: {ids == expected}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
