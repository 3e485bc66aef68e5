"""ImageNet backbone weights without run-time downloads (docs/models.md, "Backbone weights").

`model.backbone_weights: imagenet` reads torchvision's weight file from
``$TORCH_HOME/hub/checkpoints/`` and never downloads (a missing file is a ConfigError naming
the param and the path); `egnet weights fetch` is the one download, checked against the pinned
sha256 and written atomically (the CUDA image runs it at build time). No network: the weights
are a local state_dict, served by a loopback HTTP server for the fetch.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import torchvision

from egnet.cli import main
from egnet.core.config import ModelConfig
from egnet.core.errors import ConfigError, DataError
from egnet.models import backbone, build_model

torch.set_num_threads(1)

BASE = dict(variant="egnet", backbone="resnet18", output_stride=32, backbone_weights="none", num_classes=5,
            egl_positions=(2, 3, 4), egl_w1=1.0, egl_w2=0.3)


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """An empty TORCH_HOME, and any attempt to download fails the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_download(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args[:1]}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_download)
    return tmp_path / "torch"


@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(5)
    return torchvision.models.resnet18().state_dict()


def test_the_pinned_files_are_torchvisions_default_weights():
    for arch, (name, sha256) in backbone.IMAGENET_WEIGHTS.items():
        url = backbone.imagenet_weights(arch).url
        assert url.rsplit("/", 1)[1] == name
        # torchvision names its files <arch>-<first 8 hex of the sha256>.pth
        assert name.removesuffix(".pth").rsplit("-", 1)[1] == sha256[:8] and len(sha256) == 64


def test_imagenet_reads_the_local_file_and_never_downloads(torch_home, resnet18_state):
    path = backbone.imagenet_file("resnet18")
    assert path == torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    torch.save(resnet18_state, path)
    model = build_model(ModelConfig(**{**BASE, "backbone_weights": "imagenet"}))
    torch.testing.assert_close(model.encoder.conv1.weight, resnet18_state["conv1.weight"])
    torch.testing.assert_close(model.exposure_stream["layer4"][1].conv2.weight,
                               resnet18_state["layer4.1.conv2.weight"])


def test_a_missing_file_is_an_error_naming_the_param_and_the_path(torch_home):
    with pytest.raises(ConfigError) as err:
        build_model(ModelConfig(**{**BASE, "backbone_weights": "imagenet"}))
    message = str(err.value)
    assert message.startswith("model.backbone_weights = imagenet: ")
    assert str(torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message
    assert "egnet weights fetch" in message and "\n" not in message


@pytest.fixture
def file_server(tmp_path):
    """Serves tmp_path/www over HTTP on 127.0.0.1; ``.hits`` counts the GETs."""
    root = tmp_path / "www"
    root.mkdir()
    hits = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802 - http.server's name
            hits.append(self.path)
            super().do_GET()

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.root, server.hits = root, hits
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()


def _publish(server, state, monkeypatch, pin: str | None = None) -> tuple[str, str]:
    """Put a state_dict on the server as resnet18's file; pin its sha256 (or ``pin``)."""
    name = backbone.IMAGENET_WEIGHTS["resnet18"][0]
    torch.save(state, server.root / name)
    digest = hashlib.sha256((server.root / name).read_bytes()).hexdigest()
    monkeypatch.setitem(backbone.IMAGENET_WEIGHTS, "resnet18", (name, pin or digest))
    return f"{server.url}/{name}", digest


def test_fetch_checks_the_sha256_and_keeps_nothing_on_a_mismatch(torch_home, file_server, resnet18_state,
                                                                 monkeypatch, tmp_path):
    url, digest = _publish(file_server, resnet18_state, monkeypatch, pin="0" * 64)
    folder = tmp_path / "weights"
    with pytest.raises(DataError, match=f"sha256 {digest} is not the pinned 0{{64}}"):
        backbone.fetch_imagenet("resnet18", folder, url)
    assert not folder.exists() or list(folder.iterdir()) == []
    with pytest.raises(DataError, match="download failed"):
        backbone.fetch_imagenet("resnet18", folder, f"{file_server.url}/no-such-file.pth")
    assert list(folder.iterdir()) == []


def test_fetch_puts_the_file_where_imagenet_reads_it(torch_home, file_server, resnet18_state, monkeypatch):
    url, digest = _publish(file_server, resnet18_state, monkeypatch)
    path, downloaded = backbone.fetch_imagenet("resnet18", url=url)
    assert downloaded and path == backbone.imagenet_file("resnet18")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert list(path.parent.iterdir()) == [path], "no temporary file left"
    # a second fetch keeps the checked file and does not download again
    assert backbone.fetch_imagenet("resnet18", url=url) == (path, False)
    assert len(file_server.hits) == 1
    loaded = backbone.imagenet_state_dict("resnet18")
    torch.testing.assert_close(loaded["fc.weight"], resnet18_state["fc.weight"])


def test_egnet_weights_fetch_command(torch_home, file_server, resnet18_state, monkeypatch, capsys):
    url, _ = _publish(file_server, resnet18_state, monkeypatch)
    real = backbone.imagenet_weights
    monkeypatch.setattr(backbone, "imagenet_weights",
                        lambda arch: type("W", (), {"url": url})() if arch == "resnet18" else real(arch))
    assert main(["weights", "fetch", "--profile", "quick"]) == 0   # quick: resnet18
    out = capsys.readouterr().out
    assert out.startswith(f"resnet18: {backbone.imagenet_file('resnet18')} (downloaded, sha256 ")
    assert main(["weights", "fetch", "--profile", "quick"]) == 0
    assert "(already there" in capsys.readouterr().out
    # nothing reachable: exit 1, one line
    monkeypatch.setattr(backbone, "imagenet_weights",
                        lambda arch: type("W", (), {"url": "http://127.0.0.1:9/x"})())
    assert main(["weights", "fetch", "--profile", "quick", "--arch", "resnet34"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("egnet: error: http://127.0.0.1:9/x: download failed") and err.count("\n") == 1
