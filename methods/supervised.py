"""Fully supervised baseline: 0.5 (CE + Dice) on labeled images only.

Reproduces the fully supervised rows of Mamba-UNet (Wang et al., arXiv 2402.05079, Table 1)
for UNet, Swin-UNet and Mamba-UNet; the sampler yields labeled slices only.
"""
from ssl_mamba.engine.method import METHODS, Method, StepOutput

from ._common import labeled_supervised


@METHODS.register("supervised")
class Supervised(Method):
    """One network trained on labeled rows (every row, since the sampler gives labeled data only)."""

    name = "supervised"
    num_networks = (1, 1)
    needs_unlabeled = False

    def training_step(self, batch, step: int) -> StepOutput:
        logits = self.modules["net1"](batch.image)
        loss = labeled_supervised(self, logits, batch)
        return StepOutput(losses={"seg": loss}, logs={"loss/sup": loss.detach()})
