"""dataset_builders: preference data as people write it -> the columns TRL's trainers take.

Six input shapes (pairwise_ab, pairs, pairs_with_lengths, binary, pairs_sft_target, ranked), read from JSON,
JSONL, JSON with comments, CSV, Parquet (any of them .gz), save_to_disk folders, lists of dicts, `datasets`
objects or Hub ids; every row checked; mapped to what sft / reward / ppo / dpo / ipo / kto / orpo / grpo take.
Other projects' layouts (TRL, OpenAI, LLaMA-Factory, axolotl, ms-swift, OpenAssistant, PKU-SafeRLHF, SHP, Nectar:
`FORMATS`) are detected or named with `format=`; `columns=` maps any other field names to ours.

Example:
    >>> import dataset_builders
    >>> rows = [{"prompt": "Sky?", "response_a": "Blue.", "response_b": "Green.", "preference": "a"}]
    >>> dataset_builders.detect(rows)
    'pairwise_ab'
    >>> dataset_builders.load(rows, method="dpo")[0]
    {'prompt': 'Sky?', 'chosen': 'Blue.', 'rejected': 'Green.'}

See docs/data.md for the shapes, the mappings and the options.
"""

from .api import OPTIONS, LoadReport, detect, inspect, kto_class_weights, load, load_with_report
from .convert import METHODS, PAIR_STRATEGIES
from .errors import DataError
from .formats import FORMATS
from .shapes import ALL_SHAPES, FIELDS, IMPORT_FORMATS, PLAIN_SHAPES, SHAPES

__all__ = [
    "ALL_SHAPES",
    "DataError",
    "FIELDS",
    "FORMATS",
    "IMPORT_FORMATS",
    "LoadReport",
    "METHODS",
    "OPTIONS",
    "PAIR_STRATEGIES",
    "PLAIN_SHAPES",
    "SHAPES",
    "detect",
    "inspect",
    "kto_class_weights",
    "load",
    "load_with_report",
]
