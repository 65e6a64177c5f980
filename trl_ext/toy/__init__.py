"""The toy world the tiny-cpu configs run in (runtime code, not test code): recipes, tests and benchmarks use it to
run offline on a CPU in seconds.

- `tiny`: the embedded tiny Llama (``trl-ext/tiny-llama``, the default model of every `tiny-cpu.yaml`), built
  locally and cached on first use.
- `synthetic`: `ToyTask`, a known-truth task that yields every input shape from one sample, and its reward
  `toy_quality` in TRL's reward-function form (`ppo/tiny-cpu.yaml` names it).
"""
