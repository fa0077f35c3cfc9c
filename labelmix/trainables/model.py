"""Segmentation network: an encoder, one U-Net decoder, a main head and one head per decoder level.

METHOD.md "Network". The encoder is any timm model built with ``features_only=True`` or the
authors' plain U-Net encoder (``encoder="unet"``); both expose the same two lists, ``channels``
and ``reductions`` (fine to coarse), and the one decoder below is built from those lists only,
so no width is hard-coded.

Decoder (ours where the authors' code is silent): start at the deepest feature (the
bottleneck); each stage upsamples with a transposed convolution (kernel = stride = the ratio of
the two strides, as in the authors' U-Net), concatenates the next finer skip and applies two 3x3
conv+BN+ReLU. If the finest skip is at stride > 1 (every timm CNN), one more stage of the same
form without a skip brings the feature to full resolution; it feeds the main head only.

Levels, which can carry a deep-supervision (DS) head: the bottleneck plus every stage output
that merged a skip, so as many levels as encoder features (resnet18: 1/32 .. 1/2; "unet":
1/16 .. 1/1). ``ds_depth`` d builds heads only for the d finest levels.

Input: the model standardises its input with a stored (mean, std) (fit sets them from the
training images), so a saved model takes images scaled to [0, 1] as they are. The standardised
input is zero-padded (bottom and right) to a multiple of the encoder's total
stride and every output is cropped back: the main logits to H x W, a level at stride r to
ceil(H / r) x ceil(W / r), i.e. the cells that cover the real image.
"""

from __future__ import annotations

import difflib
import math
from contextlib import contextmanager
from typing import Iterator

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labelmix.errors import UserError

UNET = "unet"


def _double_conv(in_ch: int, out_ch: int) -> nn.Sequential:
    """Two 3x3 conv + BN + ReLU (the block of the authors' U-Net)."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


def _ds_head(in_ch: int, num_classes: int) -> nn.Sequential:
    """conv1x1 -> BN -> ReLU -> conv1x1 to class logits (the authors' DS head)."""
    return nn.Sequential(
        nn.Conv2d(in_ch, in_ch, 1, bias=False),
        nn.BatchNorm2d(in_ch),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_ch, num_classes, 1),
    )


class UNetEncoder(nn.Module):
    """The authors' plain U-Net encoder: double-conv blocks of base * (1, 2, 4, 8, 16) channels,
    2x2 max-pool between blocks; features at strides 1, 2, 4, 8, 16."""

    def __init__(self, in_chans: int, base_channels: int = 64, depth: int = 5):
        super().__init__()
        self.channels = [base_channels * 2**i for i in range(depth)]
        self.reductions = [2**i for i in range(depth)]
        ins = [in_chans] + self.channels[:-1]
        self.blocks = nn.ModuleList(_double_conv(i, o) for i, o in zip(ins, self.channels))

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = [self.blocks[0](x)]
        for block in self.blocks[1:]:
            feats.append(block(F.max_pool2d(feats[-1], 2)))
        return feats


class TimmEncoder(nn.Module):
    """A timm ``features_only`` model; widths and strides come from its ``feature_info``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.channels = list(net.feature_info.channels())
        self.reductions = list(net.feature_info.reduction())
        # Some transformers (swin, ...) return NHWC features; the decoder wants NCHW.
        self._nhwc = getattr(net, "output_fmt", "NCHW") == "NHWC"

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = self.net(x)
        if self._nhwc:
            feats = [f.permute(0, 3, 1, 2) for f in feats]  # B x H x W x C -> B x C x H x W
        return list(feats)


def _upsample(in_ch: int, out_ch: int, factor: int) -> nn.Module:
    return nn.ConvTranspose2d(in_ch, out_ch, kernel_size=factor, stride=factor)


def _match(x: Tensor, size: torch.Size) -> Tensor:
    # Padding the input to the total stride makes sizes match for ordinary encoders;
    # this is only a fallback for encoders whose strides round differently.
    if x.shape[-2:] != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x


class UNetDecoder(nn.Module):
    """U-Net decoder over any encoder's (channels, reductions), fine to coarse.

    ``forward`` returns (final full-resolution feature, level features coarsest first).
    """

    def __init__(self, channels: list[int], reductions: list[int], widths: list[int]):
        super().__init__()
        n = len(channels)
        self.level_channels = [channels[-1]] + widths[: n - 1]  # coarsest first
        self.level_reductions = reductions[::-1]  # coarsest first
        self.ups = nn.ModuleList()
        self.blocks = nn.ModuleList()
        prev = channels[-1]
        for width, skip_ch, r_coarse, r_fine in zip(
            widths, channels[-2::-1], reductions[:0:-1], reductions[-2::-1]
        ):
            self.ups.append(_upsample(prev, width, r_coarse // r_fine))
            self.blocks.append(_double_conv(width + skip_ch, width))
            prev = width
        self.final = None
        if reductions[0] > 1:  # one more stage, without skip, to full resolution
            width = widths[-1]
            self.final = nn.Sequential(_upsample(prev, width, reductions[0]), _double_conv(width, width))
            prev = width
        self.out_channels = prev

    def forward(self, feats: list[Tensor], full_size: torch.Size) -> tuple[Tensor, list[Tensor]]:
        x = feats[-1]
        levels = [x]
        for up, block, skip in zip(self.ups, self.blocks, feats[-2::-1]):
            x = block(torch.cat([_match(up(x), skip.shape[-2:]), skip], dim=1))
            levels.append(x)
        if self.final is not None:
            x = self.final[1](_match(self.final[0](x), full_size))
        return x, levels


class SegmentationNet(nn.Module):
    """Encoder -> U-Net decoder -> main head + DS heads on the ``ds_depth`` finest levels."""

    def __init__(
        self, encoder: nn.Module, num_classes: int, ds_depth: int, decoder_widths: list[int],
        input_stats: tuple[float, float] = (0.0, 1.0),
    ):
        super().__init__()
        # Input standardisation lives in the model (buffers), so a saved model takes raw images.
        self.register_buffer("input_mean", torch.tensor(float(input_stats[0])))
        self.register_buffer("input_std", torch.tensor(float(input_stats[1])))
        self.encoder = encoder
        self.decoder = UNetDecoder(encoder.channels, encoder.reductions, decoder_widths)
        self.num_levels = len(encoder.channels)
        self.ds_depth = ds_depth
        self.total_stride = max(encoder.reductions)
        self.head = nn.Conv2d(self.decoder.out_channels, num_classes, 1)
        first = self.num_levels - ds_depth
        # Heads for the d finest levels only, coarsest first: unused levels cost nothing.
        self.ds_heads = nn.ModuleList(_ds_head(c, num_classes) for c in self.decoder.level_channels[first:])
        self.ds_reductions = self.decoder.level_reductions[first:]

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        h, w = x.shape[-2:]
        s = self.total_stride
        x = (x - self.input_mean) / self.input_std
        x = F.pad(x, (0, -w % s, 0, -h % s))  # zero-pad right and bottom to a multiple of s
        final, levels = self.decoder(self.encoder(x), x.shape[-2:])
        main = self.head(final)[..., :h, :w]
        levels = levels[len(levels) - self.ds_depth :]
        level_logits = [
            head(f)[..., : math.ceil(h / r), : math.ceil(w / r)]
            for head, f, r in zip(self.ds_heads, levels, self.ds_reductions)
        ]
        return main, level_logits


@contextmanager
def frozen_running_stats(model: nn.Module) -> Iterator[None]:
    """Forward passes inside leave every normalisation layer's running averages as they were.

    Training-mode layers still normalise with the batch's own statistics; only the update of the
    running mean and variance (what evaluation reads) is skipped, by a momentum of 0 for the duration.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats]
    # the pass count too: a layer with momentum None averages over it
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in layers]
    for m in layers:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, count) in zip(layers, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)


def _unknown_encoder(encoder: str) -> UserError:
    close = difflib.get_close_matches(encoder, timm.list_models(), n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return UserError(
        f"encoder: unknown timm model {encoder!r}; use {UNET!r} or a name from timm.list_models() "
        f"(e.g. 'resnet18', 'test_resnet'){hint}"
    )


def _timm_features(encoder: str, pretrained: bool, in_chans: int) -> nn.Module:
    if not isinstance(encoder, str) or not timm.is_model(encoder):
        raise _unknown_encoder(str(encoder))
    try:
        return timm.create_model(encoder, features_only=True, pretrained=pretrained, in_chans=in_chans)
    except (RuntimeError, ValueError, TypeError, AssertionError, KeyError) as e:
        raise UserError(f"encoder: timm model {encoder!r} cannot be built with features_only=True: {e}") from e


def num_levels(encoder: str) -> int:
    """Number of decoder levels that can carry a DS head (= number of encoder features)."""
    if encoder == UNET:
        return 5
    if not isinstance(encoder, str) or not timm.is_model(encoder):
        raise _unknown_encoder(str(encoder))
    try:
        with torch.device("meta"):  # feature_info without allocating or initialising weights
            net = timm.create_model(encoder, features_only=True, pretrained=False)
    except Exception:  # a model whose init does not run on meta: build it for real
        net = _timm_features(encoder, False, 3)
    return len(net.feature_info.channels())


def build_model(
    encoder: str = "resnet18",
    num_classes: int = 4,
    in_chans: int = 1,
    ds_depth: int | str = 5,
    pretrained: bool = False,
    decoder_channels: tuple[int, ...] | None = None,
    unet_base_channels: int = 64,
    decoder_scale: float = 1.0,
    input_stats: tuple[float, float] = (0.0, 1.0),
) -> SegmentationNet:
    """Build the network of METHOD.md.

    ``decoder_channels``: output width of each decoder stage, coarsest first (one per skip, plus
    one for the full-resolution stage when the finest skip is at stride > 1). Default: each
    stage as wide as the skip it merges; the extra full-resolution stage half the finest skip
    (at least 16); ``decoder_scale`` multiplies these default widths (at least 16 each; ignored
    when ``decoder_channels`` is given). ``unet_base_channels`` is the first block's width of the "unet" encoder (64
    in the authors' code; small values keep tests fast). ``input_stats`` (mean, std): the
    model first maps its input x to (x - mean) / std. ``ds_depth`` "max" supervises every level.
    """
    if not isinstance(num_classes, int) or num_classes < 2:
        raise UserError(f"num_classes: must be an integer >= 2 (background + classes), got {num_classes!r}")
    if not isinstance(in_chans, int) or in_chans < 1:
        raise UserError(f"in_chans: must be an integer >= 1, got {in_chans!r}")
    if encoder == UNET:
        if pretrained:
            raise UserError("pretrained: the 'unet' encoder has no pretrained weights; use pretrained=false")
        if not isinstance(unet_base_channels, int) or unet_base_channels < 1:
            raise UserError(f"unet_base_channels: must be an integer >= 1, got {unet_base_channels!r}")
        enc: nn.Module = UNetEncoder(in_chans, unet_base_channels)
    else:
        enc = TimmEncoder(_timm_features(encoder, pretrained, in_chans))
    for coarse, fine in zip(enc.reductions[1:], enc.reductions[:-1]):
        if coarse % fine:
            raise UserError(
                f"encoder: {encoder!r} has feature strides {enc.reductions}; the decoder needs each "
                "stride to be a multiple of the previous one"
            )

    levels = len(enc.channels)
    if ds_depth == "max":  # every decoder level, down to the bottleneck
        ds_depth = levels
    if not isinstance(ds_depth, int) or ds_depth < 0:
        raise UserError(f"ds_depth: must be an integer in 0..{levels}, got {ds_depth!r}")
    if ds_depth > levels:
        raise UserError(
            f"ds_depth: {ds_depth} is more than the {levels} decoder levels of encoder {encoder!r} (allowed 0..{levels})"
        )

    has_final = enc.reductions[0] > 1
    n_stages = levels - 1 + int(has_final)
    if decoder_channels is None:
        widths = list(enc.channels[-2::-1])
        if has_final:
            widths.append(max(enc.channels[0] // 2, 16))
        if not decoder_scale > 0:
            raise UserError(f"decoder_scale: must be > 0, got {decoder_scale!r}")
        widths = [max(16, round(w * decoder_scale)) for w in widths]
    else:
        widths = list(decoder_channels)
        if len(widths) != n_stages or not all(isinstance(c, int) and c >= 1 for c in widths):
            raise UserError(
                f"decoder_channels: need {n_stages} positive integers (one per decoder stage of "
                f"encoder {encoder!r}, coarsest first), got {decoder_channels!r}"
            )
    mean, std = input_stats
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise UserError(f"input_stats: need a finite mean and a std > 0, got {input_stats!r}")
    return SegmentationNet(enc, num_classes, ds_depth, widths, (mean, std))
