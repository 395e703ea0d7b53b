"""The binaries start quiet: TensorFlow's C++ start-up lines appear only with a verbosity flag;
importing the library, even in a process that looks like a binary, leaves the environment and
file descriptor 2 alone."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from resnet._startup import is_quiet_binary
from resnet._stderr import captured_stderr, filtered_stderr

BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "argv, orig_argv, quiet",
    [
        (["/venv/bin/resnet-train"], ["python", "/venv/bin/resnet-train"], True),
        (["/venv/bin/resnet-export", "--output=x"], [], True),
        (["/src/resnet/train.py", "--model_dir=r"], ["python", "-m", "resnet.train", "--model_dir=r"], True),
        (["/src/resnet/evaluate.py"], ["python3", "-X", "importtime", "-m", "resnet.evaluate"], True),
        (["/venv/bin/resnet-train", "--verbosity=0"], [], False),
        (["/venv/bin/resnet-train", "-v", "1"], [], False),
        (["/venv/bin/resnet-eval", "--v=1"], [], False),
        (["train.py"], ["python", "train.py"], False),  # someone else's script
        (["-c"], ["python", "-c", "import resnet"], False),  # the library
        ([], [], False),
    ],
)
def test_only_our_binaries_without_a_verbosity_flag_start_quiet(argv, orig_argv, quiet):
    assert is_quiet_binary(argv, orig_argv) is quiet


def test_filtered_stderr_passes_on_all_but_the_noise(capfd):
    with filtered_stderr([r"^noise: \d+", r"INFO: chatter"]):
        os.write(2, b"noise: 12 and more\nkept line\nINFO: chatter here\nnoise: x stays\n")
    assert capfd.readouterr().err == "kept line\nnoise: x stays\n"


def test_captured_stderr_hands_back_the_text_and_writes_it_out_on_an_error(capfd):
    with captured_stderr() as captured:
        os.write(2, b"native line\n")
    assert captured.text == "native line\n" and capfd.readouterr().err == ""
    with pytest.raises(RuntimeError, match="failed"), filtered_stderr([r"context"]):
        os.write(2, b"context of the failure\n")
        raise RuntimeError("failed")
    assert capfd.readouterr().err == "context of the failure\n"


# Runs `statements` one by one, then prints the environment and what descriptor 2 is after each.
PROBE = """\
import json, os, sys

def state():
    stderr = os.fstat(2)
    return {"environ": dict(os.environ), "stderr": [stderr.st_dev, stderr.st_ino],
            "tensorflow": "tensorflow" in sys.modules}

states = [state()]
for statement in %r:
    exec(statement)
    states.append(state())
print(json.dumps(states))
"""


def _probe(directory: Path, script: str, statements: list[str]) -> tuple[list[dict], str]:
    """The states `PROBE` reports, run as `directory/script` with TF_CPP_MIN_LOG_LEVEL unset, and its stderr."""
    (directory / script).write_text(PROBE % (statements,))
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run(
        [sys.executable, str(directory / script)], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout), result.stderr


def _changes(before: dict, after: dict) -> dict:
    return {k: (before.get(k), after.get(k)) for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


@pytest.mark.slow  # a new process per case
def test_importing_the_library_leaves_the_environment_and_stderr_alone(tmp_path):
    # What TensorFlow's own import changes (it sets a few variables, TF2_BEHAVIOR and the like).
    [start, loaded], _ = _probe(tmp_path, "reference.py", ["import tensorflow, keras"])
    tensorflow_changes = _changes(start["environ"], loaded["environ"])
    trainer = "import resnet.training.trainer"
    statements = ["import resnet", "import resnet.export", trainer]
    observed, expected = {}, {}
    # A plain process imports the whole API with `import resnet` (TensorFlow's own changes only);
    # one that looks like a quiet binary (`sys.argv[0]` ends in resnet-train, no -v) imports
    # nothing heavy until it uses it. Neither touches descriptor 2.
    for script, first_heavy in (("probe.py", "import resnet"), ("resnet-train", trainer)):
        states, stderr = _probe(tmp_path, script, statements)
        loaded = False
        for statement, before, after in zip(statements, states, states[1:], strict=False):
            observed[script, statement] = {
                "environment changes": _changes(before["environ"], after["environ"]),
                "same stderr": after["stderr"] == before["stderr"],
                "tensorflow imported": after["tensorflow"],
            }
            loaded |= statement == first_heavy
            expected[script, statement] = {
                "environment changes": tensorflow_changes if statement == first_heavy else {},
                "same stderr": True,
                "tensorflow imported": loaded,
            }
        assert "oneDNN custom operations" in stderr  # TensorFlow's start-up lines reached stderr, not captured
    assert observed == expected


@pytest.mark.slow
@pytest.mark.parametrize("command", [[str(BIN / "resnet-eval")], [sys.executable, "-m", "resnet.evaluate"]])
def test_a_binary_prints_its_own_lines_only_unless_asked(command, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    quiet = subprocess.run([*command, f"--model_dir={tmp_path}"], capture_output=True, text=True, env=env, timeout=300)
    assert quiet.returncode == 2
    assert quiet.stdout == "" and quiet.stderr.splitlines() == [
        f"resnet-eval: error: `--model_dir` '{tmp_path}' holds no operative_config.gin; point it at a directory "
        "written by resnet-train."
    ]
    verbose = subprocess.run(
        [*command, f"--model_dir={tmp_path}", "--verbosity=0"], capture_output=True, text=True, env=env, timeout=300
    )
    assert verbose.returncode == 2 and "oneDNN custom operations" in verbose.stderr


@pytest.mark.slow
def test_startup_benchmark_reports_imports_and_the_first_step(tmp_path):
    out = tmp_path / "startup.json"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "startup.py"
    result = subprocess.run(
        [sys.executable, str(script), "--repeats=1", f"--json={out}"], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())
    for name in ("import_tensorflow", "import_keras", "import_resnet", "train_first_step"):
        assert 0 < results[name]["min_seconds"] <= results[name]["median_seconds"] <= results[name]["max_seconds"]
    assert results["resnet_import_overhead_seconds"] == pytest.approx(
        results["import_resnet"]["median_seconds"] - results["import_keras"]["median_seconds"], abs=2e-3
    )
    assert results["train_first_step"]["median_seconds"] > results["import_resnet"]["median_seconds"] / 2
    assert results["lines_before_first_own_line"] == 0
    assert results["machine"]["cpu"] and results["machine"]["tensorflow"]
