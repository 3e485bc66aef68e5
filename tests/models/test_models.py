"""EGNet, its ablations and the baselines: wiring, Eq. 1, output stride, weights, counts.

Small and fast: resnet18 at output stride 16/32, 2x3x64x64 inputs, one thread.
"""

from __future__ import annotations

import pytest
import torch
import torchvision

from egnet.core.config import ModelConfig
from egnet.core.errors import ConfigError
from egnet.models import EGNET_VARIANTS, build_model, count_flops, count_parameters
from egnet.models.backbone import dilate_stages, resnet
from egnet.models.egl import ConcatFusion, ExposureGuidance
from egnet.training.losses import SegExposureLoss

torch.set_num_threads(1)

NUM_CLASSES = 5
BASE = dict(
    variant="egnet", backbone="resnet18", output_stride=16, backbone_weights="none",
    num_classes=NUM_CLASSES, egl_positions=(2, 3, 4), egl_w1=1.0, egl_w2=0.3,
)
WITH_EXPOSURE = {"egnet", "no_egl", "concat", "sum"}


def cfg(**over) -> ModelConfig:
    return ModelConfig(**{**BASE, **over})


def batch(n: int = 2, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    t = torch.randint(0, NUM_CLASSES, (n, size, size), generator=g)
    t[:, :4] = 255  # some ignored pixels
    return x, t


def assert_every_parameter_learns(model: torch.nn.Module) -> None:
    dead = [n for n, p in model.named_parameters()
            if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not dead, f"no gradient reaches: {dead[:5]} ({len(dead)} in all)"


@pytest.mark.parametrize("variant", EGNET_VARIANTS)
@pytest.mark.parametrize("output_stride", [16, 32])
def test_variant_outputs_and_gradients(variant, output_stride):
    torch.manual_seed(0)
    model = build_model(cfg(variant=variant, output_stride=output_stride))
    x, t = batch()
    out = model(x)
    assert model.has_exposure_head == (variant in WITH_EXPOSURE)
    assert set(out) == ({"out", "exposure"} if variant in WITH_EXPOSURE else {"out"})
    assert out["out"].shape == (2, NUM_CLASSES, 64, 64) and out["out"].dtype == torch.float32
    if "exposure" in out:
        e = out["exposure"]
        assert e.shape == (2, 1, 64, 64) and e.dtype == torch.float32
        assert 0 <= e.min() and e.max() <= 1
    total, _ = SegExposureLoss(alpha=1.0, beta=1.0)(out, t, x)
    total.backward()
    assert_every_parameter_learns(model)


@pytest.mark.parametrize("variant", ["fcn_resnet101", "deeplabv3_resnet101"])
def test_baselines_take_unit_range_input_and_train(variant):
    torch.manual_seed(0)
    model = build_model(cfg(variant=variant, backbone="resnet101", output_stride=8))
    assert not model.has_exposure_head and model.model.aux_classifier is None
    x, t = batch()
    out = model(x)
    assert set(out) == {"out"} and out["out"].shape == (2, NUM_CLASSES, 64, 64)
    # the wrapper normalises with ImageNet statistics before the torchvision model
    model.eval()
    with torch.no_grad():
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        torch.testing.assert_close(model(x)["out"], model.model((x - mean) / std)["out"])
    model.train()
    SegExposureLoss(1.0, 1.0)(model(x), t, x)[0].backward()
    assert_every_parameter_learns(model)


def test_egl_is_equation_1():
    egl = ExposureGuidance(channels=2, w1=0.7, w2=0.3)
    with torch.no_grad():
        egl.attention[0].weight.copy_(torch.tensor([0.5, -1.0]).view(1, 2, 1, 1))
        egl.attention[0].bias.fill_(0.25)
    f_s = torch.tensor([[[[1.0, -2.0]], [[3.0, 0.5]]]])  # 1x2x1x2
    f_e = torch.tensor([[[[2.0, 0.0]], [[1.0, 4.0]]]])
    got = egl(f_s, f_e)
    # by hand: W_r at the two pixels = sigmoid(0.5*2 - 1*1 + 0.25), sigmoid(0 - 4 + 0.25)
    import math
    w = [1 / (1 + math.exp(-0.25)), 1 / (1 + math.exp(3.75))]
    want = torch.tensor([[[[0.7 * 1.0 + 0.3 * 1.0 * w[0], 0.7 * -2.0 + 0.3 * -2.0 * w[1]]],
                          [[0.7 * 3.0 + 0.3 * 3.0 * w[0], 0.7 * 0.5 + 0.3 * 0.5 * w[1]]]]])
    torch.testing.assert_close(got, want)


def _exposure_stream_grads(model, x):
    model.zero_grad()
    model(x)["out"].sum().backward()
    params = list(model.exposure_stream.parameters()) + list(model.exposure_head.parameters())
    return [p.grad for p in params]


def test_w2_zero_cuts_segmentation_off_the_exposure_stream():
    x, _ = batch()
    torch.manual_seed(0)
    guided = build_model(cfg(egl_w2=0.3)).eval()
    assert any(g is not None and g.abs().sum() > 0 for g in _exposure_stream_grads(guided, x))
    torch.manual_seed(0)
    cut = build_model(cfg(egl_w2=0.0)).eval()
    assert all(g is None or not g.abs().sum() > 0 for g in _exposure_stream_grads(cut, x))
    # and changing the exposure stream's weights does not change the segmentation output
    with torch.no_grad():
        before = cut(x)["out"]
        for p in cut.exposure_stream.parameters():
            p.add_(torch.randn_like(p))
        torch.testing.assert_close(cut(x)["out"], before)


def test_egl_positions_select_the_stages():
    model = build_model(cfg(egl_positions=(3,)))
    assert list(model.guidance) == ["layer3"]
    assert list(build_model(cfg(variant="no_egl")).guidance) == []


def test_attention_map_uses_exactly_the_resized_value_map():
    model = build_model(cfg(variant="attention_map", output_stride=16)).eval()
    seen = {}
    for name, fusion in model.guidance.items():
        fusion.attention.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o))
    x, _ = batch()
    with torch.no_grad():
        model(x)
    v = x.amax(1, keepdim=True)
    # area resize by hand: layer2 is at stride 8 (8x8 blocks), layer3/4 at stride 16
    for name, k in (("layer2", 8), ("layer3", 16), ("layer4", 16)):
        want = v.reshape(2, 1, 64 // k, k, 64 // k, k).mean(dim=(3, 5))
        torch.testing.assert_close(seen[name], want)


def test_concat_fusion_starts_as_identity_on_the_segmentation_features():
    f_s, f_e = torch.randn(2, 6, 3, 3), torch.randn(2, 6, 3, 3)
    torch.testing.assert_close(ConcatFusion(6)(f_s, f_e), f_s)


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_output_stride(backbone, output_stride):
    model = build_model(cfg(variant="egnet", backbone=backbone, output_stride=output_stride)).eval()
    with torch.no_grad():
        f_s, f_e = model.features(torch.rand(1, 3, 64, 64))
    side = 64 // output_stride
    channels = 512 if backbone == "resnet18" else 2048
    assert f_s.shape == f_e.shape == (1, channels, side, side)


@pytest.mark.parametrize("output_stride", [8, 16])
def test_basic_block_dilation_follows_torchvision_bottleneck_rule(output_stride):
    """Our hand-set BasicBlock dilations equal those torchvision gives a Bottleneck net."""
    plan = {8: [False, True, True], 16: [False, False, True]}[output_stride]
    reference = torchvision.models.resnet50(replace_stride_with_dilation=plan)
    ours = resnet("resnet18", output_stride)
    for name in ("layer2", "layer3", "layer4"):
        # resnet18: 2 blocks
        for ref_block, block in zip(getattr(reference, name), getattr(ours, name), strict=False):
            for conv in (block.conv1, block.conv2):
                assert conv.dilation == conv.padding == ref_block.conv2.dilation
            assert block.conv1.stride == ref_block.conv2.stride and block.conv2.stride == (1, 1)
            if block.downsample is not None:
                assert block.downsample[0].stride == ref_block.downsample[0].stride


def test_dilate_stages_matches_torchvision_on_bottleneck():
    """dilate_stages on a stride-32 resnet50 computes what torchvision's dilated resnet50 computes."""
    torch.manual_seed(0)
    plain = torchvision.models.resnet50().eval()
    reference = torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True]).eval()
    reference.load_state_dict(plain.state_dict())
    dilate_stages(plain, (False, True, True))
    x = torch.rand(1, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), reference(x))


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    torch.manual_seed(123)
    state = torchvision.models.resnet18().state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(state, path)
    return path, state


def test_backbone_weights_from_a_file_reach_both_streams(resnet18_file):
    path, state = resnet18_file
    model = build_model(cfg(backbone_weights=str(path)))
    torch.testing.assert_close(model.encoder.conv1.weight, state["conv1.weight"])
    torch.testing.assert_close(model.encoder.layer1[0].bn1.running_mean, state["layer1.0.bn1.running_mean"])
    for stream in (model.seg_stream, model.exposure_stream):
        for key in ("layer2.0.conv1.weight", "layer3.1.bn2.weight", "layer4.0.downsample.0.weight"):
            stage, rest = key.split(".", 1)
            torch.testing.assert_close(stream[stage].get_parameter(rest), state[key])
    # two copies, not one shared tensor
    seg, exposure = model.seg_stream["layer2"][0].conv1, model.exposure_stream["layer2"][0].conv1
    assert seg.weight.data_ptr() != exposure.weight.data_ptr()


def test_extra_input_keeps_rgb_filters_and_starts_v_at_zero(resnet18_file):
    path, state = resnet18_file
    conv = build_model(cfg(variant="extra_input", backbone_weights=str(path))).encoder.conv1
    assert conv.in_channels == 4
    torch.testing.assert_close(conv.weight[:, :3], state["conv1.weight"])
    assert not conv.weight[:, 3].any()


def test_wrong_backbone_weights_are_clear_config_errors(resnet18_file, tmp_path):
    path, state = resnet18_file
    with pytest.raises(ConfigError, match="resnet18.pth.*not a torchvision resnet50 state_dict"):
        build_model(cfg(backbone="resnet50", backbone_weights=str(path)))
    bad_shape = dict(state, **{"conv1.weight": torch.zeros(64, 3, 3, 3)})
    torch.save(bad_shape, tmp_path / "shape.pth")
    with pytest.raises(ConfigError, match="shape.pth.*'conv1.weight' has shape"):
        build_model(cfg(backbone_weights=str(tmp_path / "shape.pth")))
    (tmp_path / "notes.txt").write_text("not weights")
    with pytest.raises(ConfigError, match="notes.txt is not a torch weights file"):
        build_model(cfg(backbone_weights=str(tmp_path / "notes.txt")))
    torch.save({"model": state, "step": 3}, tmp_path / "ckpt.pth")
    with pytest.raises(ConfigError, match="ckpt.pth is not a state_dict"):
        build_model(cfg(backbone_weights=str(tmp_path / "ckpt.pth")))
    with pytest.raises(ConfigError, match="file not found: .*missing.pth"):
        build_model(cfg(backbone_weights=str(tmp_path / "missing.pth")))
    with pytest.raises(ConfigError, match="resnet18.pth.*not a torchvision resnet101"):
        build_model(cfg(variant="fcn_resnet101", backbone_weights=str(path)))


def test_count_flops_and_parameters_by_hand():
    conv = torch.nn.Conv2d(3, 8, kernel_size=3, padding=1)
    assert count_parameters(conv) == 8 * 3 * 9 + 8
    assert count_flops(conv, 10, 12) == 2 * (8 * 3 * 9) * (10 * 12)  # multiply-add = 2 FLOPs


def test_no_exposure_stream_is_fcn_resnet101_in_size_and_cost():
    """Without the exposure stream, ResNet-101 at stride 8 + FCNHead is torchvision's FCN-ResNet101."""
    with torch.device("meta"):
        ours = build_model(cfg(variant="no_exposure_stream", backbone="resnet101", output_stride=8,
                               num_classes=19))
        fcn = build_model(cfg(variant="fcn_resnet101", backbone="resnet101", output_stride=8, num_classes=19))
        both = build_model(cfg(variant="egnet", backbone="resnet101", output_stride=8, num_classes=19))
    assert count_parameters(ours) == count_parameters(fcn)
    assert count_flops(ours, 64, 96) == count_flops(fcn, 64, 96)
    assert count_flops(both, 64, 96) > 1.5 * count_flops(ours, 64, 96)
