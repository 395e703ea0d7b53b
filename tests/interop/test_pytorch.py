"""torchvision / timm weights load strictly, from a state dict or a file, and give the same numbers.

The comparisons against torchvision and timm run where torch, torchvision and timm are
installed (they never are dependencies); the rest needs no torch.
"""

import importlib.util
import sys

import numpy as np
import pytest

import resnet
from conftest import images, randomize_norms, relative_error, torchvision_resnet18_state
from resnet import interop
from resnet.interop import pytorch

TOLERANCE = 1e-3  # max |ours - theirs| / max |theirs|, for logits and every feature map


# ------------------------------------------------------------------ torch names, without torch


def test_torch_names_and_layouts_map_onto_the_model():
    state = torchvision_resnet18_state()
    ours = resnet.build("resnet18")
    report = interop.load_torch_state_dict(ours, state)
    assert report.source == "the state dict" and len(report.loaded) == len(ours.weights)
    weights = {v.path: v.numpy() for v in ours.weights}
    np.testing.assert_array_equal(weights["stem/conv1/kernel"], state["conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(weights["stem/norm1/moving_variance"], state["bn1.running_var"])
    np.testing.assert_array_equal(
        weights["stage3/block1/shortcut/conv/kernel"], state["layer3.0.downsample.0.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(weights["stage4/block2/norm2/beta"], state["layer4.1.bn2.bias"])
    np.testing.assert_array_equal(weights["classifier/kernel"], state["fc.weight"].T)
    np.testing.assert_array_equal(weights["classifier/bias"], state["fc.bias"])


def test_torch_loading_is_strict_and_all_or_nothing():
    ours = resnet.build("resnet18")
    before = ours.get_layer("stem").convs[0].kernel.numpy().copy()
    state = torchvision_resnet18_state()
    del state["layer3.1.bn2.running_var"]
    state["layer5.0.conv1.weight"] = np.zeros((1, 1, 1, 1), "float32")
    state["layer2.0.conv2.weight"] = state["layer2.0.conv2.weight"][:, :64]
    with pytest.raises(ValueError) as info:
        interop.load_torch_state_dict(ours, state)
    message = str(info.value)
    assert "nothing was loaded" in message
    assert "missing from the source: layer3.1.bn2.running_var" in message
    assert "not used by the model: layer5.0.conv1.weight" in message
    assert "shape mismatch: layer2.0.conv2.weight (128, 64, 3, 3)" in message
    np.testing.assert_array_equal(ours.get_layer("stem").convs[0].kernel.numpy(), before)


@pytest.mark.parametrize(
    "name, value, problem",
    [
        ("layer4.1.bn2.bias", np.array(["x"] * 512), "layer4.1.bn2.bias holds <U1 values, not numbers"),
        (
            "layer4.1.bn2.bias",
            np.full(512, 1e300),
            "layer4.1.bn2.bias has 512 non-finite value(s) once cast from float64 to float32",
        ),
        (
            "layer1.0.conv1.weight",
            np.full((64, 64, 3, 3), np.nan, "float32"),
            "layer1.0.conv1.weight has 36864 non-finite value(s)",
        ),
    ],
)
def test_torch_values_that_are_not_finite_numbers_load_nothing(name, value, problem):
    """Values are checked before any assignment: a late bad tensor cannot leave the model half-loaded."""
    ours = resnet.build("resnet18")
    before = [v.numpy().copy() for v in ours.weights]
    state = torchvision_resnet18_state()
    state[name] = value
    with pytest.raises(ValueError, match="nothing was loaded") as info:
        interop.load_torch_state_dict(ours, state)
    assert f"unusable values: {problem}" in str(info.value)
    for variable, old in zip(ours.weights, before, strict=True):
        np.testing.assert_array_equal(variable.numpy(), old, err_msg=variable.path)


def test_torch_negative_running_var_loads_nothing():
    """A negative variance would make the norm output NaN: refused, named, and nothing assigned."""
    ours = resnet.build("resnet18")
    before = [v.numpy().copy() for v in ours.weights]
    state = torchvision_resnet18_state()
    state["layer2.0.bn1.running_var"][[3, 7]] = -0.5
    state["layer3.0.downsample.1.running_var"][0] = -1e-8
    with pytest.raises(ValueError, match="nothing was loaded") as info:
        interop.load_torch_state_dict(ours, state)
    message = str(info.value)
    assert "unusable values: layer2.0.bn1.running_var has 2 negative value(s), impossible for a variance" in message
    assert "layer3.0.downsample.1.running_var has 1 negative value(s)" in message
    for variable, old in zip(ours.weights, before, strict=True):
        np.testing.assert_array_equal(variable.numpy(), old, err_msg=variable.path)


def test_torch_legitimate_norm_values_load():
    """Zero variances (dead channels), negative scales and means of any sign are real weights."""
    state = torchvision_resnet18_state()
    state["layer1.0.bn1.running_var"][:4] = 0.0
    state["layer1.0.bn1.running_var"][4] = -0.0
    state["layer1.0.bn1.weight"][:4] = -1.0
    state["layer1.0.bn1.running_mean"][:4] = -3.0
    ours = resnet.build("resnet18")
    interop.load_torch_state_dict(ours, state)
    assert np.isfinite(np.asarray(ours(images(batch=1, size=64)))).all()


def test_torch_only_the_counters_of_mapped_batch_norms_are_ignored():
    """`num_batches_tracked` belongs to a batch norm; under any other name it is a tensor the model does not use."""
    state = torchvision_resnet18_state()
    assert "layer2.0.downsample.1.num_batches_tracked" in state and "bn1.num_batches_tracked" in state
    for name in (
        "garbage.num_batches_tracked",
        "num_batches_tracked",
        "layer1.0.num_batches_tracked",
        "layer1.0.conv1.num_batches_tracked",
        "layer5.0.bn1.num_batches_tracked",
        "fc.num_batches_tracked",
    ):
        state[name] = np.array(7, dtype="int64")
    ours = resnet.build("resnet18")
    with pytest.raises(ValueError, match="nothing was loaded") as info:
        interop.load_torch_state_dict(ours, state)
    assert (
        "not used by the model: fc.num_batches_tracked, garbage.num_batches_tracked, "
        "layer1.0.conv1.num_batches_tracked, layer1.0.num_batches_tracked, layer5.0.bn1.num_batches_tracked, "
        "num_batches_tracked."
    ) in str(info.value)


def _as_torch_state(model):
    """`model`'s weights under torch names and layouts, with a counter beside every batch norm."""
    torch_name = pytorch._torch_name(model)
    state = {}
    for variable in model.weights:
        value, name = variable.numpy(), torch_name(variable.path)
        if variable.path.endswith("/kernel"):
            value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
        state[name] = value
        if name.endswith(".running_var"):
            state[name.removesuffix("running_var") + "num_batches_tracked"] = np.array(3, dtype="int64")
    return state


@pytest.mark.parametrize(
    "name, counters",
    [
        (
            "resnet50d",
            [
                "conv1.1.num_batches_tracked",
                "conv1.4.num_batches_tracked",
                "bn1.num_batches_tracked",
                "layer2.0.downsample.2.num_batches_tracked",
                "layer1.0.bn3.num_batches_tracked",
            ],
        ),
        ("resnet50", ["bn1.num_batches_tracked", "layer2.0.downsample.1.num_batches_tracked"]),
    ],
)
def test_torch_counters_of_timm_and_torchvision_layouts_load(name, counters):
    """The deep stem's norms (timm: conv1.1, conv1.4, bn1) and ResNet-D's shortcut norm (downsample.2) have
    counters too."""
    source = resnet.build(name, ["ResNet.stage_blocks = (1, 1, 1, 1)"])
    randomize_norms(source)
    state = _as_torch_state(source)
    assert set(counters) <= set(state)
    ours = resnet.build(name, ["ResNet.stage_blocks = (1, 1, 1, 1)"])
    report = interop.load_torch_state_dict(ours, state)
    assert not any(n.endswith("num_batches_tracked") for n in report.loaded)
    x = images(batch=1, size=64)
    np.testing.assert_array_equal(np.asarray(ours(x)), np.asarray(source(x)))
    state["layer1.0.downsample.3.num_batches_tracked"] = np.array(3, dtype="int64")  # no such norm in either
    with pytest.raises(ValueError, match=r"not used by the model: layer1.0.downsample.3.num_batches_tracked\."):
        interop.load_torch_state_dict(ours, state)


def test_torch_skip_classifier_reports_what_it_skipped():
    ours = resnet.build("resnet18", ["ResNet.num_classes = 10"])
    with pytest.raises(ValueError, match=r"fc.weight \(1000, 512\).*classifier/kernel \(512, 10\).*skip_classifier"):
        interop.load_torch_state_dict(ours, torchvision_resnet18_state())
    report = interop.load_torch_state_dict(ours, torchvision_resnet18_state(), skip_classifier=True)
    assert report.skipped == ["fc.bias", "fc.weight"]
    assert "skipped fc.bias, fc.weight" in str(report)


def test_torch_state_dict_files(tmp_path):
    from safetensors.numpy import save_file

    state = torchvision_resnet18_state()
    expected = {}
    for path in (tmp_path / "w.npz", tmp_path / "w.safetensors"):
        if path.suffix == ".npz":
            np.savez(path, **state)
        else:
            save_file(state, str(path))
        ours = resnet.build("resnet18")
        assert interop.load_torch_state_dict(ours, path).source == str(path)
        weights = {v.path: v.numpy() for v in ours.weights}
        for key, value in (expected or weights).items():
            np.testing.assert_array_equal(weights[key], value)
        expected = weights


def test_bad_torch_files_are_refused_without_running_code(tmp_path):
    ours = resnet.build("resnet18")
    with pytest.raises(ValueError, match=r"'.*nothing.npz' does not exist"):
        interop.load_torch_state_dict(ours, tmp_path / "nothing.npz")
    text = tmp_path / "notes.safetensors"
    text.write_text("hello")
    with pytest.raises(ValueError, match=r"notes.safetensors' is not a readable .safetensors weights file"):
        interop.load_torch_state_dict(ours, text)
    # An .npz whose array is a pickled object: np.load would have to unpickle it; we never do.
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.npz"
    np.savez(evil, payload=np.array([_Boom(str(marker))], dtype=object))
    with pytest.raises(ValueError, match=r"evil.npz' is not a readable .npz weights file.*allow_pickle"):
        interop.load_torch_state_dict(ours, evil)
    assert not marker.exists()
    wrong = tmp_path / "model.ckpt"
    wrong.write_text("x")
    with pytest.raises(ValueError, match=r"expected a .npz, .safetensors, .pth or .pt weights file"):
        interop.load_torch_state_dict(ours, wrong)


class _Boom:
    """Unpickling this would create a file (it never gets the chance)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pth_is_read_without_torch(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails, installed or not
    pth = tmp_path / "model.pth"
    pth.write_bytes(b"PK")
    with pytest.raises(ValueError, match=r"model.pth' is not a torch.save file: not a zip archive"):
        interop.load_torch_state_dict(resnet.build("resnet18"), pth)


# ------------------------------------------------------------------- against torchvision / timm

torch_missing = importlib.util.find_spec("torch") is None
TORCH_CASES = {
    # ours: (library, constructor name)
    "resnet18": ("torchvision", "resnet18"),
    "resnet34": ("torchvision", "resnet34"),
    "resnet50": ("torchvision", "resnet50"),
    "resnet101": ("torchvision", "resnet101"),
    "resnet152": ("torchvision", "resnet152"),
    "resnext50_32x4d": ("torchvision", "resnext50_32x4d"),
    "wide_resnet50_2": ("torchvision", "wide_resnet50_2"),
    "resnet200": ("timm", "resnet200"),
    "resnet50d": ("timm", "resnet50d"),
    "seresnet50": ("timm", "seresnet50"),
    "resnet50_gn": ("timm", "resnet50_gn"),
}


@pytest.mark.skipif(
    torch_missing,
    reason="torch is not installed (it is never a dependency); "
    "install torch, torchvision and timm to compare against them",
)
@pytest.mark.parametrize("name", sorted(TORCH_CASES))
def test_torch_weights_match_numerically(name):
    import torch

    library, constructor = TORCH_CASES[name]
    if importlib.util.find_spec(library) is None:
        pytest.skip(f"{library} is not installed")
    if library == "timm":
        import timm

        source = timm.create_model(constructor, pretrained=False)
    else:
        import torchvision

        source = getattr(torchvision.models, constructor)(weights=None)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in source.modules():
            if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0, 0.2, generator=generator)
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.2, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
    source.eval()
    x = images(batch=2, size=64)
    features = {}
    for i in range(1, 5):
        getattr(source, f"layer{i}").register_forward_hook(
            lambda module, inputs, output, key=f"C{i + 1}": features.__setitem__(key, output.detach().numpy())
        )
    with torch.no_grad():
        logits = source(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()

    ours = resnet.build(name)
    interop.load_torch_state_dict(ours, source.state_dict())
    assert relative_error(np.asarray(ours(x)), logits) <= TOLERANCE
    for key, value in ours.extract_features(x).items():
        assert relative_error(np.asarray(value), features[key].transpose(0, 2, 3, 1)) <= TOLERANCE, key


@pytest.mark.skipif(torch_missing, reason="torch is not installed")
def test_pth_is_read_without_running_its_code(tmp_path):
    import torch

    state = {k: torch.from_numpy(np.asarray(v)) for k, v in torchvision_resnet18_state().items()}
    torch.save(state, tmp_path / "r18.pth")
    ours = resnet.build("resnet18")
    assert interop.load_torch_state_dict(ours, tmp_path / "r18.pth").source.endswith("r18.pth")
    marker = tmp_path / "ran"
    torch.save({"x": _Boom(str(marker))}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match=r"evil.pth' is not a readable torch.save state dict: .* 'io.open'"):
        interop.load_torch_state_dict(ours, tmp_path / "evil.pth")
    assert not marker.exists()
