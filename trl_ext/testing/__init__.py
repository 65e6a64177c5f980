"""Test fixtures that ship with the package, so tests, tiny recipes and benchmarks run offline on a CPU.

- `tiny`: the embedded tiny Llama (``trl-ext/tiny-llama``), built locally and cached on first use.
- `synthetic`: `ToyTask`, a known-truth task that yields every input shape from one sample, and its reward
  `toy_quality` in TRL's reward-function form.
"""
