"""Deep adversarial network (DAN, Zhang et al., MICCAI 2017), as SSL4MIS
`train_adversarial_network_2D.py`.

A discriminator D(softmax, image) -> 2 logits learns to tell labeled (target 1) from unlabeled
(target 0) predictions; the segmenter is pushed, with the ramped weight, to make D answer 1 on
unlabeled rows.  Two optimizer groups: "seg" (the experiment's optimizer) then "disc" (Adam
1e-4, betas (0.9, 0.99), constant).  The D loss is a thunk: after the segmenter stepped, the
segmenter is re-run in eval mode without gradients on the whole batch and D is trained on it.
The original's adversarial target has the labeled batch size; here it has |U| rows.
"""
from dataclasses import dataclass, field
from typing import List

import torch
from torch import nn
from torch.nn import functional as F

from ssl_mamba.engine.method import METHODS, Method, OptimizerGroup, StepOutput
from ssl_mamba.errors import ConfigError

from ._common import frozen, labeled_supervised, module_mode, ramp_weight, require_unlabeled


@dataclass
class AdversarialOptions:
    """discriminator: model name (fc_discriminator, or test_discriminator for tiny runs);
    disc_lr / disc_betas: the discriminator's Adam settings (original DAN_lr 1e-4)."""

    discriminator: str = "fc_discriminator"
    disc_lr: float = 1e-4
    disc_betas: List[float] = field(default_factory=lambda: [0.9, 0.99])


def build_discriminator(name: str, num_classes: int) -> nn.Module:
    """Create the discriminator through the model registry (imported late: models are optional here)."""
    from ssl_mamba.models import create_model

    return create_model(name, num_classes=num_classes)


@METHODS.register("adversarial")
class Adversarial(Method):
    name = "adversarial"
    num_networks = (1, 1)
    Options = AdversarialOptions

    def __init__(self, cfg, networks):
        super().__init__(cfg, networks)
        if len(self.options.disc_betas) != 2:
            raise ConfigError(f"method 'adversarial': 'method.options.disc_betas' needs 2 values, got {self.options.disc_betas}")
        disc = build_discriminator(self.options.discriminator, cfg.data.num_classes)
        first = next(networks[0].parameters(), None)
        self.modules["disc"] = disc.to(first.device) if first is not None else disc

    def optimizer_groups(self) -> List[OptimizerGroup]:
        seg = [p for p in self.modules["net1"].parameters()]
        override = {
            "type": "adam",
            "lr": self.options.disc_lr,
            "betas": tuple(self.options.disc_betas),
            "schedule": "constant",
        }
        return [OptimizerGroup("seg", seg), OptimizerGroup("disc", list(self.modules["disc"].parameters()), override)]

    def training_step(self, batch, step: int) -> StepOutput:
        require_unlabeled(batch, 1, self.name)
        net, disc = self.modules["net1"], self.modules["disc"]
        logits = net(batch.image)
        sup = labeled_supervised(self, logits, batch)
        n = batch.n_labeled
        with module_mode(disc, False), frozen(disc):
            d_out = disc(logits[n:].softmax(dim=1), batch.unlabeled_image)
        fooled = torch.ones(batch.n_unlabeled, dtype=torch.long, device=d_out.device)
        adv = F.cross_entropy(d_out, fooled)
        weight = ramp_weight(self, step)
        seg_loss = sup + weight * adv
        logs = {"loss/sup": sup.detach(), "loss/adversarial": adv.detach(), "weight/consistency": weight}
        return StepOutput(losses={"seg": seg_loss, "disc": lambda: self.discriminator_loss(batch)}, logs=logs)

    def discriminator_loss(self, batch) -> torch.Tensor:
        """CE(D(p, x), 1 for labeled rows / 0 for unlabeled rows) on the updated segmenter's output."""
        net, disc = self.modules["net1"], self.modules["disc"]
        with torch.no_grad(), module_mode(net, False):
            probs = net(batch.image).softmax(dim=1)
        target = torch.zeros(batch.size, dtype=torch.long, device=probs.device)
        target[: batch.n_labeled] = 1
        with module_mode(disc, True):
            return F.cross_entropy(disc(probs, batch.image), target)
