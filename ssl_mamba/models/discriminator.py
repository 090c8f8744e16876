"""FCDiscriminator of SSL4MIS (`networks/discriminator.py`), used by the adversarial (DAN) method."""
import torch
from torch import nn

from ..errors import UserError
from .registry import register_model


class FCDiscriminator(nn.Module):
    """(softmax map (N, K, H, W), image (N, C, H, W)) -> real/fake logits (N, 2).

    Two stride-2 4x4 convs (one per input, summed), three more stride-2 convs with LeakyReLU(0.2)
    (Dropout2d 0.5 after the first two), AvgPool(pool_size), flatten, Linear(8 * ndf * 4 -> 2).
    The flattened size must be 8*ndf*2*2: with pool 7 that holds for 224 and 256 inputs.
    """

    def __init__(self, num_classes: int = 4, ndf: int = 64, n_channel: int = 1, pool_size: int = 7):
        super().__init__()
        self.conv0 = nn.Conv2d(num_classes, ndf, kernel_size=4, stride=2, padding=1)
        self.conv1 = nn.Conv2d(n_channel, ndf, kernel_size=4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(ndf, ndf * 2, kernel_size=4, stride=2, padding=1)
        self.conv3 = nn.Conv2d(ndf * 2, ndf * 4, kernel_size=4, stride=2, padding=1)
        self.conv4 = nn.Conv2d(ndf * 4, ndf * 8, kernel_size=4, stride=2, padding=1)
        self.classifier = nn.Linear(ndf * 32, 2)
        self.avgpool = nn.AvgPool2d(pool_size)
        self.leaky_relu = nn.LeakyReLU(0.2)
        self.dropout = nn.Dropout2d(0.5)
        self.num_classes = num_classes
        self.pool_size = pool_size

    def forward(self, prob: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        x = self.conv0(prob) + self.conv1(image)
        x = self.dropout(self.leaky_relu(self.conv2(x)))
        x = self.dropout(self.leaky_relu(self.conv3(x)))
        x = self.avgpool(self.leaky_relu(self.conv4(x)))
        if x.shape[2:] != (2, 2):
            h, w = prob.shape[2:]
            raise UserError(f"FCDiscriminator (pool {self.pool_size}) cannot take a {h}x{w} input: after 5 "
                            f"stride-2 convs and pooling it must leave a 2x2 map, got {tuple(x.shape[2:])}")
        return self.classifier(x.flatten(1))  # (N, 8*ndf*4) -> (N, 2)


@register_model("fc_discriminator")
def fc_discriminator(in_chans: int = 1, num_classes: int = 4) -> FCDiscriminator:
    """The original discriminator: ndf 64, AvgPool 7 (224 or 256 inputs)."""
    return FCDiscriminator(num_classes, ndf=64, n_channel=in_chans)


@register_model("test_discriminator")
def test_discriminator(in_chans: int = 1, num_classes: int = 4) -> FCDiscriminator:
    """Tiny variant: ndf 4, AvgPool 2, for 64x64 inputs."""
    return FCDiscriminator(num_classes, ndf=4, n_channel=in_chans, pool_size=2)
