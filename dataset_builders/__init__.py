"""dataset_builders: preference data as people write it -> the columns TRL's trainers take.

Six input shapes (pairwise_ab, pairs, pairs_with_lengths, binary, pairs_sft_target, ranked), read from JSON,
JSONL, JSON with comments, CSV, Parquet (any of them .gz), save_to_disk folders, lists of dicts, `datasets`
objects or Hub ids; every row checked; mapped to what sft / reward / ppo / dpo / ipo / kto / orpo / grpo take.

Example:
    >>> import dataset_builders
    >>> rows = [{"prompt": "Sky?", "response_a": "Blue.", "response_b": "Green.", "preference": "a"}]
    >>> dataset_builders.detect(rows)
    'pairwise_ab'
    >>> dataset_builders.load(rows, method="dpo")[0]
    {'prompt': 'Sky?', 'chosen': 'Blue.', 'rejected': 'Green.'}

See docs/data.md for the shapes, the mappings and the options.
"""

from .api import OPTIONS, LoadReport, detect, kto_class_weights, load, load_with_report
from .convert import METHODS, PAIR_STRATEGIES
from .errors import DataError
from .shapes import ALL_SHAPES, FIELDS, IMPORT_FORMATS, PLAIN_SHAPES, SHAPES

__all__ = [
    "ALL_SHAPES",
    "DataError",
    "FIELDS",
    "IMPORT_FORMATS",
    "LoadReport",
    "METHODS",
    "OPTIONS",
    "PAIR_STRATEGIES",
    "PLAIN_SHAPES",
    "SHAPES",
    "detect",
    "kto_class_weights",
    "load",
    "load_with_report",
]
