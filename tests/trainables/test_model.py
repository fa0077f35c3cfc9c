"""Shapes, DS depth and errors of the segmentation network (tiny models, tiny inputs)."""

import pytest
import timm
import torch

from labelmix.errors import UserError
from labelmix.trainables.model import build_model, frozen_running_stats, num_levels


def _sizes(levels):
    return [tuple(t.shape[-2:]) for t in levels]


@pytest.mark.parametrize("encoder", ["test_resnet", "resnet18"])
def test_timm_encoder_shapes(encoder):
    torch.manual_seed(0)
    model = build_model(encoder, num_classes=4, in_chans=1, ds_depth=5).eval()
    main, levels = model(torch.randn(1, 1, 64, 64))
    assert main.shape == (1, 4, 64, 64)
    # bottleneck 1/32 and the stage outputs 1/16 .. 1/2, coarsest first
    assert _sizes(levels) == [(2, 2), (4, 4), (8, 8), (16, 16), (32, 32)]
    assert all(t.shape[:2] == (1, 4) for t in levels)


def test_unet_encoder_non_square_input_is_padded_and_cropped():
    model = build_model("unet", num_classes=3, in_chans=2, ds_depth=5, unet_base_channels=4).eval()
    assert model.num_levels == 5 and model.encoder.channels == [4, 8, 16, 32, 64]
    main, levels = model(torch.randn(2, 2, 40, 72))  # neither side a multiple of 16
    assert main.shape == (2, 3, 40, 72)
    # levels 1/16 .. 1/1, each cropped to ceil(size / stride)
    assert _sizes(levels) == [(3, 5), (5, 9), (10, 18), (20, 36), (40, 72)]


def test_non_square_timm_input():
    model = build_model("test_efficientnet", num_classes=2, ds_depth=2).eval()
    main, levels = model(torch.randn(1, 1, 50, 70))
    assert main.shape == (1, 2, 50, 70)
    assert _sizes(levels) == [(13, 18), (25, 35)]  # the two finest: 1/4 and 1/2


def test_ds_depth_zero_has_no_heads_and_returns_empty_list():
    model = build_model("unet", num_classes=2, ds_depth=0, unet_base_channels=2).eval()
    main, levels = model(torch.randn(1, 1, 16, 16))
    assert levels == [] and len(model.ds_heads) == 0
    assert main.shape == (1, 2, 16, 16)


def test_input_standardisation_is_part_of_the_model():
    torch.manual_seed(0)
    plain = build_model("unet", num_classes=2, ds_depth=0, unet_base_channels=2).eval()
    torch.manual_seed(0)
    standardised = build_model("unet", num_classes=2, ds_depth=0, unet_base_channels=2, input_stats=(0.4, 0.2)).eval()
    x = torch.rand(1, 1, 16, 16)
    assert torch.allclose(standardised(x)[0], plain((x - 0.4) / 0.2)[0], atol=1e-6)
    assert standardised.state_dict()["input_mean"].item() == pytest.approx(0.4)
    assert standardised.state_dict()["input_std"].item() == pytest.approx(0.2)
    with pytest.raises(UserError, match="input_stats"):
        build_model("unet", num_classes=2, unet_base_channels=2, input_stats=(0.4, 0.0))


def test_num_levels():
    assert num_levels("resnet18") == 5
    assert num_levels("unet") == 5
    assert num_levels("test_convnext") == 4  # strides 4 .. 32
    assert build_model("test_convnext", ds_depth=4).num_levels == 4
    assert build_model("test_convnext", ds_depth="max").ds_depth == 4  # the model resolves "max" itself


def test_decoder_widths_come_from_feature_info():
    a = build_model("test_resnet", ds_depth=1)
    b = build_model("test_efficientnet", ds_depth=1)
    for model, name in [(a, "test_resnet"), (b, "test_efficientnet")]:
        info = timm.create_model(name, features_only=True, in_chans=1).feature_info
        assert model.encoder.channels == info.channels()
        assert model.encoder.reductions == info.reduction()
        assert model.decoder.level_channels[0] == info.channels()[-1]  # bottleneck
        # each stage merges one skip: its first conv sees stage width + skip width
        first_convs = [block[0].in_channels for block in model.decoder.blocks]
        assert first_convs == [w + s for w, s in zip(model.decoder.level_channels[1:], info.channels()[-2::-1])]
    assert a.decoder.level_channels != b.decoder.level_channels


def test_custom_decoder_channels():
    model = build_model("test_resnet", ds_depth=5, decoder_channels=(16, 12, 8, 8, 4)).eval()
    assert model.decoder.level_channels == [96, 16, 12, 8, 8]
    assert model.decoder.out_channels == 4
    main, levels = model(torch.randn(1, 1, 32, 32))
    assert main.shape == (1, 4, 32, 32) and len(levels) == 5


def test_unknown_encoder():
    with pytest.raises(UserError, match=r"encoder: unknown timm model 'resnet_x'"):
        build_model("resnet_x")
    with pytest.raises(UserError, match=r"encoder: unknown timm model"):
        num_levels("resnet_x")


def test_ds_depth_beyond_levels():
    with pytest.raises(UserError, match=r"ds_depth: 7 is more than the 5 decoder levels of encoder 'resnet18'"):
        build_model("resnet18", ds_depth=7)
    with pytest.raises(UserError, match=r"ds_depth: .*-1"):
        build_model("unet", ds_depth=-1, unet_base_channels=2)


def test_other_bad_arguments():
    with pytest.raises(UserError, match="decoder_channels: need 5"):
        build_model("test_resnet", decoder_channels=(8, 8))
    with pytest.raises(UserError, match="pretrained"):
        build_model("unet", pretrained=True)
    with pytest.raises(UserError, match="num_classes"):
        build_model("unet", num_classes=1, unet_base_channels=2)


def test_frozen_running_stats_normalise_by_the_batch_and_leave_the_averages():
    """A batch of one channel with values 1 and 3: training mode normalises by its own mean 2 and
    (biased) variance 1, so the output is -1 and +1 (eps aside), 0 and 1 after the ReLU; the running averages stay at
    0 and 1, momentum is 0.1 again afterwards, and the next pass outside updates them by 0.1 x
    (mean 2, unbiased variance 2)."""
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(1), torch.nn.ReLU())
    x = torch.tensor([1.0, 3.0]).view(2, 1, 1, 1)
    with frozen_running_stats(model):
        out = model(x)
    assert out.flatten().tolist() == pytest.approx([0.0, 1.0], abs=1e-4)
    bn = model[0]
    assert bn.running_mean.item() == 0.0 and bn.running_var.item() == 1.0
    assert bn.momentum == 0.1
    model(x)
    assert bn.running_mean.item() == pytest.approx(0.2)
    assert bn.running_var.item() == pytest.approx(0.9 + 0.1 * 2.0)
