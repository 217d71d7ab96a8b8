"""The benchmarks of GASP Table 1 and of its generalisation figure, each read from its released files and scored
as its official code does.

One file a benchmark (reader, official answer extraction, aggregation rule, pinned reference to that code):
vsibench.py, allangles.py, blink.py (Table 1); mmsi.py, stibench.py, spacevista.py (the out-of-domain benchmarks
of the generalisation figure). What they share: common.py (optional packages, required fields, UTF-8 text, item
fingerprints), media.py (frames and images, named errors), scoring.py (predictions files, coverage, the summary,
the markdown table). eval.py runs the model on them; `BENCHMARKS` below is what it knows of each.
"""
from dataclasses import dataclass
from typing import Callable

from benchmarks import allangles, blink, mmsi, spacevista, stibench, vsibench


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str  # the table's heading
    load: Callable  # (root: Path, media: bool = True) -> items: {id, category, prompt, answer, video | images, ...}
    score: Callable  # (item, prediction: str) -> {extracted, score 0..1, ...}
    aggregate: Callable  # (per-category means, counts, lines) -> (overall 0..1, extra summary fields)
    columns: list  # (category, column label): the paper's Table 1 columns first, then the other categories
    subtypes: dict  # column -> the categories scored together as its mean (VSI-Bench's Rel. Dir.)
    max_new_tokens: int  # the official generation length


BENCHMARKS = {m.__name__.split(".")[-1]: Benchmark(m.__name__.split(".")[-1], m.TITLE, m.load, m.score, m.aggregate,
                                                    m.COLUMNS, m.SUBTYPES, m.MAX_NEW_TOKENS)
              for m in (vsibench, allangles, blink, mmsi, stibench, spacevista)}
