"""The 3D U-Net: shapes, errors, initialisation, size and cost, and that it can learn."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from organseg.config import PAPER_WIDTHS
from organseg.losses import dice_ce_loss
from organseg.metrics import dice_per_class
from organseg.nets.unet3d import UNet3D, count_flops, count_parameters, count_saved_for_backward


@pytest.mark.parametrize(
    ("widths", "upsample", "shape"),
    [
        ((4,), "transpose", (5, 3, 7)),
        ((4, 8), "transpose", (8, 6, 2)),
        ((4, 8, 16), "transpose", (16, 32, 8)),
        ((2, 4, 8, 16), "trilinear", (16, 8, 24)),
    ],
)
def test_output_has_input_size_and_one_channel_per_class(widths, upsample, shape) -> None:
    torch.manual_seed(0)
    net = UNet3D(in_channels=2, num_classes=5, widths=widths, upsample=upsample)
    logits = net(torch.randn(3, 2, *shape))
    assert logits.shape == (3, 5, *shape)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_required_multiple_is_two_to_the_levels_below_the_top() -> None:
    assert UNet3D(1, 2, (4,)).required_multiple == 1
    assert UNet3D(1, 2, (4, 8, 16)).required_multiple == 4
    with torch.device("meta"):
        assert UNet3D(1, 2, PAPER_WIDTHS).required_multiple == 32


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((1, 1, 30, 32, 32), r"divisible by 4, got \(30, 32, 32\)"),
        ((1, 1, 32, 32, 34), r"divisible by 4"),
        ((1, 2, 32, 32, 32), r"expects input \(B, 1, X, Y, Z\)"),
        ((1, 32, 32, 32), r"expects input"),
    ],
)
def test_bad_input_shapes_raise_a_clear_error(shape, message) -> None:
    net = UNet3D(1, 3, (4, 8, 16))
    with pytest.raises(ValueError, match=message):
        net(torch.zeros(shape))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"upsample": "nearest"}, "upsample must be one of"),
        ({"widths": ()}, "widths must be"),
        ({"widths": (4, 0)}, "widths must be"),
        ({"blocks_per_level": 0}, "blocks_per_level"),
        ({"num_classes": 0}, "num_classes"),
    ],
)
def test_bad_arguments_raise(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        UNet3D(**{"in_channels": 1, "num_classes": 3, **kwargs})


def test_he_initialisation_for_leaky_relu() -> None:
    torch.manual_seed(0)
    net = UNet3D(1, 3, widths=(16, 32, 64))
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d) and m.weight[0].numel() >= 16 * 27]
    assert len(convs) >= 6
    for conv in convs:
        fan_in = conv.weight[0].numel()
        expected = math.sqrt(2 / ((1 + 0.01**2) * fan_in))
        assert conv.weight.std().item() == pytest.approx(expected, rel=0.05)
        assert abs(conv.weight.mean().item()) < 0.1 * expected
        assert torch.count_nonzero(conv.bias) == 0
    norms = [m for m in net.modules() if isinstance(m, torch.nn.InstanceNorm3d)]
    assert all(torch.all(n.weight == 1) and torch.all(n.bias == 0) for n in norms)


def test_parameter_count_of_a_two_level_net_by_hand() -> None:
    conv = lambda n_in, n_out, k=3: n_out * n_in * k**3 + n_out  # noqa: E731 - weights + bias
    norm = lambda n: 2 * n  # noqa: E731 - affine scale + shift
    top = conv(1, 4) + norm(4) + conv(4, 4) + norm(4)  # 564
    bottom = conv(4, 8) + norm(8) + conv(8, 8) + norm(8)  # 2640
    up = 8 * 4 * 2**3 + 4  # transposed conv: 260
    decoder = conv(8, 4) + norm(4) + conv(4, 4) + norm(4)  # 1320
    head = conv(4, 3, k=1)  # 15
    assert top + bottom + up + decoder + head == 4799
    assert count_parameters(UNet3D(1, 3, widths=(4, 8))) == 4799


def test_flops_of_a_two_level_net_by_hand_and_by_torch() -> None:
    net = UNet3D(1, 3, widths=(4, 8))
    top, bottom = 8**3, 4**3  # voxels per level for an 8^3 input
    multiply_adds = (
        top * 27 * (1 * 4 + 4 * 4)  # encoder level 0
        + bottom * 27 * (4 * 8 + 8 * 8)  # encoder level 1 (strided conv counts output voxels)
        + bottom * 8 * 8 * 4  # transposed conv: each input voxel x 2^3 kernel x out channels
        + top * 27 * (8 * 4 + 4 * 4)  # decoder
        + top * 4 * 3  # head
    )
    assert count_flops(net, (1, 1, 8, 8, 8)) == 2 * multiply_adds == 2_256_896
    with FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, 1, 8, 8, 8))
    assert counter.get_total_flops() == 2 * multiply_adds


def test_count_flops_leaves_the_model_as_it_was() -> None:
    net = UNet3D(1, 3, widths=(4, 8, 16), upsample="trilinear")
    before = {name: tensor.clone() for name, tensor in net.state_dict().items()}
    assert count_flops(net, (2, 1, 16, 16, 16)) == 2 * count_flops(net, (1, 1, 16, 16, 16))
    assert all(not m._forward_hooks for m in net.modules())
    assert all(t.device.type == "cpu" and torch.equal(t, before[n]) for n, t in net.state_dict().items())


def test_paper_configuration_has_about_41_million_parameters() -> None:
    with torch.device("meta"):
        net = UNet3D(in_channels=1, num_classes=14, widths=PAPER_WIDTHS)
    assert 38e6 <= count_parameters(net) <= 44e6
    # 160^3 coarse patches: about 1.9 TFLOPs per forward pass, counted without memory.
    assert 1.7e12 < count_flops(net, (1, 1, 160, 160, 160)) < 2.1e12


def test_init_kwargs_rebuild_the_same_net() -> None:
    net = UNet3D(2, 4, widths=(4, 8, 16), blocks_per_level=3, upsample="trilinear")
    rebuilt = UNet3D(**net.init_kwargs)
    assert rebuilt.load_state_dict(net.state_dict()) is not None
    assert count_parameters(rebuilt) == count_parameters(net)


def test_deep_supervision_gives_every_decoder_level_in_training_only() -> None:
    net = UNet3D(1, 3, widths=(4, 8, 16, 32), deep_supervision=True)
    image = torch.randn(2, 1, 16, 24, 8)
    outputs = net(image)
    assert [tuple(o.shape) for o in outputs] == [(2, 3, 16, 24, 8), (2, 3, 8, 12, 4), (2, 3, 4, 6, 2)]
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(image), outputs[0].detach())  # the same top head, alone
    plain = UNet3D(1, 3, widths=(4, 8, 16, 32))
    assert len(plain.deep_heads) == 0 and isinstance(plain(image), torch.Tensor)
    rebuilt = UNet3D(**net.init_kwargs)
    rebuilt.load_state_dict(net.state_dict())
    assert rebuilt.deep_supervision and len(rebuilt.deep_heads) == 2


def _two_blob_volume(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, 1, n, n, n) noisy image with two spheres of different brightness, and their labels."""
    generator = torch.Generator().manual_seed(0)
    axis = torch.arange(size, dtype=torch.float32)
    i, j, k = torch.meshgrid(axis, axis, axis, indexing="ij")
    labels = torch.zeros(size, size, size, dtype=torch.int64)
    labels[(i - 9) ** 2 + (j - 10) ** 2 + (k - 16) ** 2 < 8**2] = 1
    labels[(i - 23) ** 2 + (j - 21) ** 2 + (k - 15) ** 2 < 9**2] = 2
    image = torch.tensor([0.0, 2.0, -2.0])[labels] + 0.2 * torch.randn(labels.shape, generator=generator)
    return image[None, None], labels[None]


def test_tiny_net_overfits_one_volume() -> None:
    torch.manual_seed(0)
    image, labels = _two_blob_volume()
    net = UNet3D(1, 3, widths=(4, 8, 16))
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-2)
    losses = []
    for _ in range(60):
        optimizer.zero_grad()
        logits = net(image)
        dice = dice_per_class(logits.argmax(dim=1)[0].numpy(), labels[0].numpy(), [1, 2])
        loss = dice_ce_loss(logits, labels)
        losses.append(loss.item())
        if min(dice.values()) > 0.9:  # learnt: stop early to keep the test short
            break
        loss.backward()
        optimizer.step()
    assert losses[-1] < 0.2 * losses[0] or min(dice.values()) > 0.9, (losses[0], losses[-1], dice)
    assert losses[-1] < 0.5 * losses[0]


def test_bf16_autocast_forward_agrees_with_float32() -> None:
    torch.manual_seed(0)
    net = UNet3D(1, 3, widths=(4, 8, 16)).eval()
    image = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        reference = net(image)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low_precision = net(image)
    assert low_precision.dtype == torch.bfloat16
    error = (low_precision.float() - reference).abs().max() / reference.std()
    assert error < 0.15


@pytest.mark.parametrize("deep_supervision", [False, True])
def test_recomputing_the_top_level_keeps_less_and_gives_the_same_gradients(deep_supervision: bool) -> None:
    torch.manual_seed(0)
    net = UNet3D(1, 4, widths=(8, 16, 32), deep_supervision=deep_supervision)
    image = torch.randn(2, 1, 32, 32, 16)
    saved, gradients = {}, {}
    for recompute in (False, True):
        net.recompute_top_level = recompute
        net.zero_grad()
        saved[recompute] = count_saved_for_backward(net, image)
        outputs = net(image)
        sum(output.square().mean() for output in (outputs if deep_supervision else (outputs,))).backward()
        gradients[recompute] = [parameter.grad.clone() for parameter in net.parameters()]
    assert saved[True] < 0.6 * saved[False]
    assert all(torch.equal(a, b) for a, b in zip(gradients[False], gradients[True], strict=True))
