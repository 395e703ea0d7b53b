"""The operative config a build records depends on its own config only, not on what the process
built before it."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

# Builds several configs in one process, in the order of its arguments, and prints the operative
# config each recorded: two trainers as resnet-train builds them, and a standalone stage from gin
# whose blocks (unlike the trainers', which their ResNet sets norm, activation, ...) are their own.
SCRIPT = textwrap.dedent(
    """
    import json
    import sys
    import uuid

    import gin
    import keras

    from resnet import config
    from resnet.stage import ResidualStage
    from resnet.training.trainer import Trainer


    def trainer(*bindings):
        config.parse(["experiments/demo"], ["Trainer.epochs = 1", *bindings])
        gin.get_configurable(Trainer)(model_dir=f"ram://{uuid.uuid4().hex}").build()


    def stage():
        gin.parse_config("ResidualStage.block = 'basic'\\nResidualStage.filters = 16")
        gin.get_configurable(ResidualStage)()(keras.ops.zeros((1, 8, 8, 16)))


    BUILDS = {
        "demo": trainer,
        "grouped_bottleneck": lambda: trainer(
            "ResNet.block = 'bottleneck'", "ResNet.norm = 'group'", "GroupNorm.groups = 4"
        ),
        "stage": stage,
    }
    recorded = []
    for name in sys.argv[1:]:
        gin.clear_config()
        keras.backend.clear_session()
        BUILDS[name]()
        recorded.append((name, gin.operative_config_str()))
    print(json.dumps(recorded))
    """
)


@pytest.mark.slow  # a new process per case
def test_each_build_records_the_same_operative_config_whatever_ran_before_it_in_the_process():
    # Each config first and again later, so that each pair is built in both orders.
    order = ["stage", "demo", "grouped_bottleneck", "stage", "grouped_bottleneck", "demo"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, *order], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr
    records: dict[str, list[str]] = {}
    for name, operative in json.loads(result.stdout.strip().splitlines()[-1]):
        records.setdefault(name, []).append(operative)
    for name, (first, later) in records.items():
        assert later == first, f"{name}'s operative config changed after the builds before it:\n{later}\n---\n{first}"
    # The stage's blocks record their own settings; the ResNet's are the ResNet's bindings.
    stage, demo, grouped = records["stage"][0], records["demo"][0], records["grouped_bottleneck"][0]
    assert "BasicBlock.norm = " in stage and "BasicBlock.activation = 'relu'" in stage
    assert "BasicBlock.norm = " not in demo and "ResNet.norm = @BatchNorm" in demo
    assert "BottleneckBlock.norm = " not in grouped and "ResNet.norm = 'group'" in grouped
