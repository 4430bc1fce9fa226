"""A plain 3D U-Net, laid out as nnU-Net's PlainConvUNet.

Each level holds `blocks_per_level` blocks of Conv3d 3x3x3 -> InstanceNorm3d(affine) ->
LeakyReLU(0.01). Levels below the top start with a stride-2 convolution instead of a
pooling layer, so down-sampling is learned. The decoder up-samples (transposed convolution,
or trilinear interpolation plus a 1x1x1 convolution), concatenates the encoder's output of
the same level and applies the same blocks; a 1x1x1 convolution gives the class logits.

With `deep_supervision`, every decoder level below the top gets its own 1x1x1 head too, and
in training mode the net returns the logits of all of them, finest first (nnU-Net's deep
supervision): the lower levels then get a gradient of their own, which speeds up learning
when steps are few. In eval mode it returns the top logits only, like the plain net.

Input and output are (B, C, X, Y, Z); every spatial size must be a multiple of
`required_multiple` = 2 ** (levels - 1). The code never names a device: it runs on CPU,
CUDA and under `torch.autocast` unchanged.

Sizes with 1 input channel and 14 classes: organseg.config.PAPER_WIDTHS about 41 M
parameters (the paper's size per stage); (16, 32, 64, 128, 256) 5.6 M; (8, 16, 32, 64, 128),
the cpu preset's stage 2, 1.4 M.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.utils.checkpoint
from torch import nn
from torch.func import functional_call

UPSAMPLE_MODES = ("transpose", "trilinear")

LEAKY_SLOPE = 0.01


class UNet3D(nn.Module):
    """Plain 3D U-Net: (B, in_channels, X, Y, Z) -> logits (B, num_classes, X, Y, Z)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: tuple[int, ...] = (16, 32, 64, 128, 256),
        blocks_per_level: int = 2,
        upsample: str = "transpose",
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        _check_args(in_channels, num_classes, widths, blocks_per_level, upsample)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.widths = tuple(int(w) for w in widths)
        self.blocks_per_level = blocks_per_level
        self.upsample = upsample
        self.deep_supervision = bool(deep_supervision)
        inputs = (in_channels, *self.widths[:-1])
        self.encoder = nn.ModuleList(
            _level(n_in, n_out, blocks_per_level, stride=1 if level == 0 else 2)
            for level, (n_in, n_out) in enumerate(zip(inputs, self.widths))
        )
        self.upsamplers = nn.ModuleList(
            _upsampler(self.widths[level + 1], self.widths[level], upsample) for level in range(len(self.widths) - 1)
        )
        # The decoder sees the up-sampled features concatenated with the skip: twice the width.
        self.decoder = nn.ModuleList(_level(2 * width, width, blocks_per_level, stride=1) for width in self.widths[:-1])
        self.head = nn.Conv3d(self.widths[0], num_classes, kernel_size=1)
        # Heads of decoder levels 1..L-2 (half, quarter, ... resolution); none without deep supervision.
        deep_levels = range(1, len(self.widths) - 1) if self.deep_supervision else ()
        self.deep_heads = nn.ModuleList(
            nn.Conv3d(self.widths[level], num_classes, kernel_size=1) for level in deep_levels
        )
        self.apply(_init_he)
        # Training only, not part of the network: recompute the top level's activations in
        # the backward pass (torch.utils.checkpoint) instead of keeping them.
        self.recompute_top_level = False

    @property
    def required_multiple(self) -> int:
        """Every spatial input size must be a multiple of this (2 ** (levels - 1))."""
        return 2 ** (len(self.widths) - 1)

    @property
    def init_kwargs(self) -> dict:
        """The constructor's arguments, to store in checkpoints and rebuild the net."""
        return {
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "widths": self.widths,
            "blocks_per_level": self.blocks_per_level,
            "upsample": self.upsample,
            "deep_supervision": self.deep_supervision,
        }

    def check_input_shape(self, shape: Sequence[int]) -> None:
        """Raise ValueError unless `shape` is (B, in_channels, X, Y, Z) with sizes the net can take."""
        if len(shape) != 5 or shape[1] != self.in_channels:
            raise ValueError(f"UNet3D expects input (B, {self.in_channels}, X, Y, Z), got shape {tuple(shape)}")
        multiple = self.required_multiple
        if any(size % multiple for size in shape[2:]):
            raise ValueError(
                f"UNet3D with {len(self.widths)} levels needs spatial sizes divisible by {multiple}, "
                f"got {tuple(shape[2:])}; pad or crop the patch, or use fewer levels"
            )

    def forward(self, image: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Logits (B, num_classes, X, Y, Z) for an image (B, in_channels, X, Y, Z).

        With deep supervision in training mode: a tuple of logits, the full-size ones first,
        then those of each lower decoder level (sizes halved level by level).
        """
        self.check_input_shape(image.shape)
        recompute = self.recompute_top_level and self.training and torch.is_grad_enabled()
        skips = [_run_level(self.encoder[0], [image], recompute)]
        for level in self.encoder[1:]:
            skips.append(level(skips[-1]))
        features = skips.pop()
        supervised = self.training and self.deep_supervision
        deep_logits = []
        for level in reversed(range(1, len(self.decoder))):
            features = self.upsamplers[level](features)
            # Popped, not indexed: each skip is freed once used, which lowers inference's peak memory.
            features = self.decoder[level](torch.cat((skips.pop(), features), dim=1))
            if supervised:  # every decoder level below the top has a head
                deep_logits.append(self.deep_heads[level - 1](features))
        if self.decoder:  # else a one-level net, whose encoder output is the top
            # Handed over in a list, so that _run_level holds the only reference and frees it once used.
            merged = [torch.cat((skips.pop(), self.upsamplers[0](features)), dim=1)]
            features = _run_level(self.decoder[0], merged, recompute)
        logits = self.head(features)
        return (logits, *reversed(deep_logits)) if supervised else logits


def _run_level(level: nn.Sequential, handed_over: list[torch.Tensor], recompute: bool) -> torch.Tensor:
    """A full-resolution level's blocks on the one tensor in `handed_over` (which is emptied).

    Layer by layer, each output replacing its input: the only reference to the input is
    then this function's, so at inference each full-resolution tensor is freed as soon as
    the next layer has used it (the 64-channel concatenation of the top decoder level
    would otherwise live through the whole level, the inference's peak).

    With `recompute` each block keeps only its input for the backward pass, block by block
    rather than the level at once: the backward pass then holds one block's recomputed
    activations at a time, not the whole level's.
    """
    features = handed_over.pop()
    for block in level:
        if recompute:
            # Non-reentrant: right under autocast and for inputs that need no gradient (the image).
            features = torch.utils.checkpoint.checkpoint(block, features, use_reentrant=False)
        else:
            for layer in block:
                features = layer(features)
    return features


def _check_args(in_channels: int, num_classes: int, widths: Sequence[int], blocks: int, upsample: str) -> None:
    if in_channels < 1 or num_classes < 1:
        raise ValueError(f"in_channels and num_classes must be >= 1, got {in_channels} and {num_classes}")
    if len(widths) < 1 or any(int(w) < 1 for w in widths):
        raise ValueError(f"widths must be one or more positive channel counts, got {tuple(widths)}")
    if blocks < 1:
        raise ValueError(f"blocks_per_level must be >= 1, got {blocks}")
    if upsample not in UPSAMPLE_MODES:
        raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, got {upsample!r}")


def _conv_block(n_in: int, n_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(n_in, n_out, kernel_size=3, stride=stride, padding=1),
        nn.InstanceNorm3d(n_out, eps=1e-5, affine=True),
        nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
    )


def _level(n_in: int, n_out: int, blocks: int, stride: int) -> nn.Sequential:
    """`blocks` conv blocks; the first one changes the width and, with stride 2, halves the size."""
    return nn.Sequential(_conv_block(n_in, n_out, stride), *(_conv_block(n_out, n_out, 1) for _ in range(blocks - 1)))


def _upsampler(n_in: int, n_out: int, mode: str) -> nn.Module:
    if mode == "transpose":
        return nn.ConvTranspose3d(n_in, n_out, kernel_size=2, stride=2)
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False),
        nn.Conv3d(n_in, n_out, kernel_size=1),
    )


def _init_he(module: nn.Module) -> None:
    """He-normal weights for the leaky ReLU slope and zero biases (as nnU-Net's InitWeights_He)."""
    if isinstance(module, nn.Conv3d | nn.ConvTranspose3d):
        nn.init.kaiming_normal_(module.weight, a=LEAKY_SLOPE)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Floating-point operations (2 x multiply-accumulates) of the convolutions in one forward pass.

    Args:
        model: any module; its weights stay where they are.
        input_shape: the full input shape, e.g. (1, 1, 160, 160, 160) for one CT patch.

    Runs the forward pass on the meta device (shapes only, no memory), so counting the
    paper-size net at 160^3 costs milliseconds. Norms, activations and biases are not counted.
    """
    multiply_adds = 0

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal multiply_adds
        kernel = math.prod(module.kernel_size)
        if isinstance(module, nn.ConvTranspose1d | nn.ConvTranspose2d | nn.ConvTranspose3d):
            # Every input voxel scatters into kernel x out_channels outputs.
            multiply_adds += inputs[0].numel() * kernel * module.out_channels // module.groups
        else:
            multiply_adds += output.numel() * kernel * module.in_channels // module.groups

    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, _CONVS)]
    try:
        tensors = itertools.chain(model.named_parameters(), model.named_buffers())
        meta_state = {name: torch.empty_like(tensor, device="meta") for name, tensor in tensors}
        with torch.no_grad():
            functional_call(model, meta_state, (torch.empty(tuple(input_shape), device="meta"),))
    finally:
        for handle in handles:
            handle.remove()
    return 2 * multiply_adds


def count_saved_for_backward(model: nn.Module, image: torch.Tensor) -> int:
    """Bytes a forward pass of `image` keeps for the backward pass (its activations), in the model's mode.

    Counted as autograd saves them, so it works on the meta device too (shapes only, no memory).
    """
    saved = 0

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        model(image)
    return saved
