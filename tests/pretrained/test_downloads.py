"""Named weights end to end, with no network: a loopback HTTP server is the publishers' mirror.

Each test adds entries to the weights table for small files it writes (a CIFAR ResNet-20 in
torch's layout), under made-up publisher URLs that `RESNET_WEIGHTS_MIRROR` maps to the server.
"""

import dataclasses
import hashlib
import http.server
import os
import socket
import threading
import urllib.parse

import keras
import numpy as np
import pytest
import tensorflow as tf

import resnet
from resnet import pretrained
from resnet.interop.pytorch import _from_torch_layout, _torch_name
from resnet.pretrained import download, table

HOST = "weights.example"


class WeightsServer:
    """Serves `files` (URL path -> bytes) on 127.0.0.1 in a thread; `cut` paths stop half-way."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut: set[str] = set()
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = 10

            def do_GET(self):  # noqa: N802 (the http.server API)
                server.requests.append(self.path)
                content = server.files.get(self.path)
                if content is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                if self.path in server.cut:
                    self.wfile.write(content[: len(content) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(content)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def stop(self):
        if not self.thread.is_alive():
            return
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()


@pytest.fixture
def server(monkeypatch, tmp_path):
    running = WeightsServer()
    monkeypatch.setenv(download.MIRROR_ENV, running.url)
    monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(download, "TIMEOUT_SECONDS", 10)
    yield running
    running.stop()


def resnet20_state(seed: int, config: str = "cifar/resnet20") -> dict[str, np.ndarray]:
    """The tensors of a random `config` (a CIFAR ResNet-20), under torch's names and layouts."""
    model = resnet.build(config)
    rng = np.random.default_rng(seed)
    name = _torch_name(model)
    state = {}
    for variable in model.weights:
        value = rng.normal(size=variable.shape).astype(np.float32)
        if variable.path.endswith("moving_variance"):
            value = np.abs(value) + 0.5
        torch_value = value
        if variable.path.endswith("/kernel"):  # back to torch's OIHW / (out, in)
            torch_value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
        assert np.array_equal(_from_torch_layout(variable.path, torch_value), value)
        state[name(variable.path)] = torch_value
    return state


def npz_bytes(state: dict[str, np.ndarray], path) -> bytes:
    np.savez(path, **state)
    return path.read_bytes()


def add_entry(monkeypatch, name: str, content: bytes, file_name: str, **changes) -> table.Entry:
    """A table entry for `content` at https://weights.example/models/<file_name>, hash sha256."""
    base = table.entries()["resnet18.tv_in1k"]
    fields = dict(
        name=name,
        config=name.split(".")[0],
        url=f"https://{HOST}/models/{file_name}",
        hash="sha256:" + hashlib.sha256(content).hexdigest()[:10],
        classes=10,
    )
    item = dataclasses.replace(base, **{**fields, **changes})
    monkeypatch.setitem(table.entries(), name, item)
    return item


def served_path(item: table.Entry) -> str:
    parts = urllib.parse.urlsplit(item.url)
    return f"/{parts.netloc}{parts.path}"


def test_a_name_downloads_once_then_builds_from_the_cache_offline(server, monkeypatch, tmp_path, capsys):
    state = resnet20_state(0)
    content = npz_bytes(state, tmp_path / "w.npz")
    item = add_entry(monkeypatch, "cifar/resnet20.test_in1k", content, "resnet20-test.npz")
    server.files[served_path(item)] = content

    model = resnet.build("cifar/resnet20", weights=item.name)
    cached = tmp_path / "cache" / "resnet20-test.npz"
    assert cached.read_bytes() == content
    assert server.requests == [served_path(item)]
    err = capsys.readouterr().err
    assert f"Downloading {server.url}{HOST}/models/resnet20-test.npz to {cached}" in err
    size = f"{len(content) / 1e6:.1f}"
    assert err.endswith(f"  [{'#' * 30}] {size} of {size} MB\n")  # the progress, on stderr
    kernel = model.get_layer("stem").weights[0]
    np.testing.assert_array_equal(kernel.numpy(), state["conv1.weight"].transpose(2, 3, 1, 0))
    assert sorted(os.listdir(tmp_path / "cache")) == ["resnet20-test.npz"]  # no partial file left

    server.stop()  # a second build needs no network
    again = resnet.build("cifar/resnet20", weights=item.name)
    for a, b in zip(model.weights, again.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert "Downloading" not in capsys.readouterr().err


def test_a_file_with_another_hash_is_refused_and_not_cached(server, monkeypatch, tmp_path):
    content = npz_bytes(resnet20_state(0), tmp_path / "w.npz")
    item = add_entry(monkeypatch, "cifar/resnet20.test_in1k", content, "resnet20-test.npz")
    tampered = bytearray(content)
    tampered[-1] ^= 1
    server.files[served_path(item)] = bytes(tampered)
    with pytest.raises(pretrained.WeightsDownloadError) as error:
        resnet.build("cifar/resnet20", weights=item.name)
    actual = hashlib.sha256(tampered).hexdigest()
    assert f"its sha256 is {actual}, expected one starting with {item.hash[7:]}" in str(error.value)
    assert "It was not kept" in str(error.value)
    assert os.listdir(tmp_path / "cache") == []


def test_a_connection_cut_mid_file_leaves_nothing_and_a_retry_succeeds(server, monkeypatch, tmp_path):
    content = npz_bytes(resnet20_state(1), tmp_path / "w.npz")
    item = add_entry(monkeypatch, "cifar/resnet20.test_in1k", content, "resnet20-test.npz")
    server.files[served_path(item)] = content
    server.cut.add(served_path(item))
    with pytest.raises(
        pretrained.WeightsDownloadError, match=rf"ended after {len(content) // 2} of {len(content)} bytes"
    ):
        pretrained.weights_file(item.name, progress=False)
    assert os.listdir(tmp_path / "cache") == []
    server.cut.clear()
    path = pretrained.weights_file(item.name, progress=False)
    assert open(path, "rb").read() == content


def test_without_a_server_or_cache_the_error_says_where_to_place_the_file(monkeypatch, tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv(download.MIRROR_ENV, f"http://127.0.0.1:{port}")
    cache = tmp_path / "cache"
    item = table.entries()["resnet18.tv_in1k"]
    with pytest.raises(pretrained.WeightsDownloadError) as error:
        resnet.build("resnet18", weights="resnet18.tv_in1k", cache_dir=cache)
    message = str(error.value)
    assert f"Could not download http://127.0.0.1:{port}/download.pytorch.org/models/" in message
    assert f"download {item.url} elsewhere and place it at {cache / os.path.basename(item.url)}" in message
    assert os.listdir(cache) == []


def test_a_damaged_cached_file_is_fetched_again_and_abandoned_partials_are_removed(server, monkeypatch, tmp_path):
    content = npz_bytes(resnet20_state(2), tmp_path / "w.npz")
    item = add_entry(monkeypatch, "cifar/resnet20.test_in1k", content, "resnet20-test.npz")
    server.files[served_path(item)] = content
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "resnet20-test.npz").write_bytes(content[:100])
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    (cache / f".resnet20-test.npz.{dead}.partial").write_bytes(b"half")
    lines = []
    path = download.fetch(item.url, item.hash, progress=False, log=lines.append)
    assert open(path, "rb").read() == content
    assert lines[0].startswith(f"The cached {cache / 'resnet20-test.npz'} is damaged (its sha256 is ")
    assert sorted(os.listdir(cache)) == ["resnet20-test.npz"]


def test_bgr_weights_are_loaded_to_take_rgb(server, monkeypatch, tmp_path):
    state = resnet20_state(3)
    content = npz_bytes(state, tmp_path / "w.npz")
    prep = {**table.entries()["keras_resnet50.imagenet"].preprocessing}
    item = add_entry(monkeypatch, "cifar/resnet20.bgr_test", content, "resnet20-bgr.npz", preprocessing=prep)
    server.files[served_path(item)] = content
    as_published = resnet.build("cifar/resnet20", weights=tmp_path / "w.npz")
    rgb = resnet.build("cifar/resnet20", weights=item.name)
    images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(rgb(images).numpy(), as_published(images[..., ::-1]).numpy(), rtol=1e-5, atol=1e-5)
    info = resnet.weights_info(item.name)
    assert info["preprocessing"]["channels"] == "rgb" and info["published_preprocessing"]["channels"] == "bgr"
    assert info["preprocessing"]["mean"] == prep["mean"][::-1]


def test_settings_and_names_are_checked(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match=r"Unknown pretrained weights 'resnet50.tv3_in1k'. Did you mean 'resnet50.tv"):
        resnet.build("resnet50", weights="resnet50.tv3_in1k")
    with pytest.raises(ValueError, match=r"are for the config 'resnet50', not 'resnet101'"):
        resnet.build("resnet101", weights="resnet50.tv_in1k")
    with pytest.raises(ValueError, match=r"Weights file .*missing.pth' does not exist"):
        resnet.build("cifar/resnet20", weights=tmp_path / "missing.pth")
    monkeypatch.setenv(download.MIRROR_ENV, "ftp://mirror/")
    with pytest.raises(ValueError, match=r"\$RESNET_WEIGHTS_MIRROR must be an http://"):
        download.source_url("https://download.pytorch.org/models/resnet18-f37072fd.pth")
    monkeypatch.setenv(download.MIRROR_ENV, "http://mirror:8000/base/")
    assert (
        download.source_url("https://download.pytorch.org/models/resnet18-f37072fd.pth")
        == "http://mirror:8000/base/download.pytorch.org/models/resnet18-f37072fd.pth"
    )
    monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / "env"))
    assert download.cache_dir() == str(tmp_path / "env")
    assert download.cache_dir(tmp_path / "arg") == str(tmp_path / "arg")
    monkeypatch.delenv(download.CACHE_ENV)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    assert download.cache_dir() == str(tmp_path / "keras" / "resnet-weights")
    for bad in ("sha256:1234567", "sha256:" + "0" * 65, "md5:" + "0" * 31, "SHA256:12345678", "sha1:12345678"):
        with pytest.raises(ValueError, match="must be 'sha256:'"):
            download.check_hash_spec(bad)


def test_a_file_fetched_by_hand_is_checked_by_hash_and_by_loading(monkeypatch, tmp_path, capsys):
    from resnet.pretrained.__main__ import main

    content = npz_bytes(resnet20_state(4), tmp_path / "w.npz")
    item = add_entry(monkeypatch, "cifar/resnet20.test_in1k", content, "resnet20-test.npz")
    main(["", "check", item.name, str(tmp_path / "w.npz")])
    out = capsys.readouterr().out
    assert f"matches the publisher's hash {item.hash}" in out and "the file is good" in out
    (tmp_path / "other.npz").write_bytes(content + b"x")
    with pytest.raises(SystemExit) as exit_code:
        main(["", "check", item.name, str(tmp_path / "other.npz")])
    assert exit_code.value.code == 2 and "is not the file of cifar/resnet20.test_in1k" in capsys.readouterr().err
    state = resnet20_state(4)
    del state["fc.bias"]
    np.savez(tmp_path / "partial.npz", **state)
    monkeypatch.setitem(
        table.entries(), item.name, dataclasses.replace(item, hash=None)
    )  # a file whose hash passes but whose tensors do not fill the model
    with pytest.raises(SystemExit):
        main(["", "check", item.name, str(tmp_path / "partial.npz")])
    assert "missing from the source: fc.bias" in capsys.readouterr().err
    main([""])
    assert "resnet50.tv2_in1k" in capsys.readouterr().out


@pytest.fixture
def served_resnet18(server, monkeypatch, tmp_path):
    """An ImageNet-size entry, `resnet18.test_in1k`, with bicubic 240 -> 224 preprocessing, served."""
    content = npz_bytes(resnet20_state(5, "resnet18"), tmp_path / "r18.npz")
    prep = {**table.entries()["resnet18.tv_in1k"].preprocessing, "resize": 240, "interpolation": "bicubic"}
    item = add_entry(monkeypatch, "resnet18.test_in1k", content, "resnet18-test.npz", classes=1000, preprocessing=prep)
    server.files[served_path(item)] = content
    return item


# slow: an ImageNet-size model, downloaded and built twice; CI runs it, the quick loop does not.
@pytest.mark.slow
def test_a_name_classifies_with_its_preprocessing_and_class_names(served_resnet18):
    from resnet.classifier import Classifier

    classifier = Classifier.from_weights(served_resnet18.name)
    assert classifier.class_names == pretrained.class_names(served_resnet18.name)
    image = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    top = classifier.top(image, k=3)
    model = resnet.build("resnet18", weights=served_resnet18.name)
    prep = pretrained.preprocessing(served_resnet18.name)
    assert (prep.serving_size, prep.interpolation) == ((240, 240), "bicubic")
    expected = keras.ops.softmax(model(prep.serve(image[None]))).numpy()[0]
    np.testing.assert_allclose(classifier.probabilities(image[None])[0], expected, rtol=1e-4, atol=1e-6)
    assert top[0]["class"] == expected.argmax() and top[0]["probability"] == pytest.approx(expected.max(), rel=1e-4)
    assert [t["name"] for t in top] == [table.imagenet_class_names()[t["class"]] for t in top]
    assert top[0]["probability"] >= top[1]["probability"] >= top[2]["probability"]


@pytest.mark.slow
def test_named_weights_export_as_their_publisher_evaluates_them(served_resnet18, tmp_path):
    from resnet.export.serving import export_for_serving, read_labels

    name = served_resnet18.name
    model = resnet.build("resnet18", weights=name)
    prep = pretrained.preprocessing(name)
    output = export_for_serving(model, prep, str(tmp_path / "export"), class_names=pretrained.class_names(name))
    assert read_labels(output) == list(table.imagenet_class_names())
    images = np.random.default_rng(1).integers(0, 256, (2, 250, 333, 3), dtype=np.uint8)
    served = tf.saved_model.load(f"{output}/saved_model").signatures["serving_default"](images=tf.constant(images))
    expected = keras.ops.softmax(model(prep.serve(images))).numpy()
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, rtol=1e-4, atol=1e-6)


def test_a_training_run_starts_from_weights_by_name(server, monkeypatch, tmp_path):
    from resnet.training.finetune import PretrainedWeights

    state = resnet20_state(6)
    content = npz_bytes(state, tmp_path / "w.npz")
    item = add_entry(monkeypatch, "cifar/resnet20.test_in1k", content, "resnet20-test.npz")
    server.files[served_path(item)] = content
    model = resnet.build("cifar/resnet20", ["ResNet.num_classes = 5"])
    report = PretrainedWeights(name=item.name, skip_classifier=True, cache_dir=str(tmp_path / "c")).load_into(model)
    assert report.skipped == ["fc.bias", "fc.weight"] and os.listdir(tmp_path / "c") == ["resnet20-test.npz"]
    stem_kernel = model.get_layer("stem").weights[0].numpy()
    np.testing.assert_array_equal(stem_kernel, state["conv1.weight"].transpose(2, 3, 1, 0))
    for kwargs in ({}, {"name": item.name, "path": str(tmp_path / "w.npz")}):
        with pytest.raises(ValueError, match="needs exactly one of `name`"):
            PretrainedWeights(**kwargs)
    with pytest.raises(ValueError, match="Unknown pretrained weights 'resnet50.tv3_in1k'"):
        PretrainedWeights(name="resnet50.tv3_in1k")


@pytest.mark.slow
def test_keras_weights_by_name_take_rgb_with_the_mean_in_rgb_order(server, monkeypatch, tmp_path):
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    from conftest import randomize_norms, relative_error

    source = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classifier_activation=None)
    randomize_norms(source, shift=0.2)
    with h5py.File(tmp_path / "keras.h5", "w") as f:  # the format of keras.applications' published files
        legacy_h5_format.save_weights_to_hdf5_group(f, source)
    content = (tmp_path / "keras.h5").read_bytes()
    published = table.entries()["keras_resnet50.imagenet"]
    item = add_entry(
        monkeypatch,
        "keras_resnet50.test",
        content,
        "resnet50-test.h5",
        format="keras",
        classes=1000,
        preprocessing=published.preprocessing,
    )
    server.files[served_path(item)] = content
    ours = resnet.build("keras_resnet50", weights=item.name)
    rgb = np.random.default_rng(2).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    theirs = source(keras.applications.resnet.preprocess_input(rgb.copy())).numpy()  # BGR, their mean
    prep = pretrained.preprocessing(item.name)
    normalized = (rgb - np.array(prep.mean, np.float32)) / np.array(prep.std, np.float32)
    assert relative_error(ours(normalized).numpy(), theirs) <= 1e-4


def test_an_unwritable_cache_is_named_not_taken_for_a_network_failure(server, monkeypatch, tmp_path):
    content = npz_bytes(resnet20_state(7), tmp_path / "w.npz")
    item = add_entry(monkeypatch, "cifar/resnet20.test_in1k", content, "resnet20-test.npz")
    server.files[served_path(item)] = content
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(pretrained.WeightsDownloadError, match=r"Cannot create the weights cache .*RESNET_WEIGHTS_DIR"):
        pretrained.weights_file(item.name, cache_dir=tmp_path / "file" / "cache", progress=False)
    missing = add_entry(monkeypatch, "cifar/resnet20.missing", content, "resnet20-missing.npz")
    with pytest.raises(pretrained.WeightsDownloadError, match=r"resnet20-missing.npz: HTTP 404 Not Found. To use it"):
        pretrained.weights_file(missing.name, progress=False)
    assert os.listdir(tmp_path / "cache") == []
