"""Fuzzing `dataset_builders.load`: random rows, field names, value types (nested, empty, NaN, huge, control
characters, lone surrogates, emoji) and file forms (tests/_data_fuzz.py). Every case must load or raise the one-line
`DataError`: never another exception, never a dead process. Fast tier: 500 cases in-process; slow tier: 10,000 in a
subprocess (a crash names its seed). `DATA_FUZZ_START=N` runs other seeds."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from _data_fuzz import run_case

START = int(os.environ.get("DATA_FUZZ_START", "0"))


def test_500_random_inputs_load_or_raise_one_data_error_line(caplog):
    bugs = []
    for seed in range(START, START + 500):
        with tempfile.TemporaryDirectory() as folder:
            outcome, description = run_case(seed, Path(folder))
        if outcome == "bug":
            bugs.append(description)
    assert not bugs, "\n".join(bugs[:10])


@pytest.mark.slow
def test_10000_random_inputs_in_a_subprocess_load_or_raise_one_data_error_line(tmp_path):
    progress = tmp_path / "seed"
    env = dict(os.environ, DATA_FUZZ_PROGRESS=str(progress), TQDM_DISABLE="1")
    script = Path(__file__).with_name("_data_fuzz.py")
    proc = subprocess.run([sys.executable, str(script), str(START + 500), "10000"], env=env, capture_output=True,
                          text=True, timeout=1800)  # fmt: skip
    if proc.returncode < 0:  # killed by a signal: the process died on this seed
        pytest.fail(f"the process died (signal {-proc.returncode}) on fuzz seed {progress.read_text()}")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "10000 cases" in proc.stdout


def test_pyarrow_26_builds_an_invalid_table_from_this_jsonl_and_we_read_it_right(tmp_path):
    """Reproduction for upstream (pyarrow 26.0.1): a list starting with null, then a row without that field, gives a
    table that fails `validate(full=True)` and whose `to_pylist` raises SystemError. We validate Arrow's result and
    parse such a file line by line. When this stops reproducing, the validation can be reconsidered."""
    import pyarrow as pa
    import pyarrow.json as pa_json

    import dataset_builders

    path = tmp_path / "x.jsonl"
    path.write_text('{"h": [null, "a"]}\n{}\n')
    table = pa_json.read_json(str(path))
    with pytest.raises(pa.ArrowInvalid, match="list offsets"):
        table.validate(full=True)
    rows = tmp_path / "pairs.jsonl"
    rows.write_text('{"prompt": "Q", "chosen": "a", "rejected": "b", "h": [null, "a"]}\n{"prompt": "R", "chosen": "c", "rejected": "d"}\n')  # fmt: skip
    ds = dataset_builders.load(rows, method="dpo")
    assert ds.to_list() == [{"prompt": "Q", "chosen": "a", "rejected": "b"}, {"prompt": "R", "chosen": "c", "rejected": "d"}]  # fmt: skip
