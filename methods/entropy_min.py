"""Entropy minimisation (ADVENT, Vu et al., CVPR 2019), as SSL4MIS
`train_entropy_minimization_2D.py`: sup + w * mean pixel entropy / ln(K).

As the original, the entropy covers the whole batch (labeled rows too) by default;
`entropy_on: unlabeled` restricts it to the unlabeled rows.  The original divides by ln 4
whatever the class count; ln(K) is used here so the term lies in [0, 1] for any K.
"""
from dataclasses import dataclass

from ssl_mamba.engine.method import METHODS, Method, StepOutput
from ssl_mamba.losses import normalized_entropy

from ._common import check_choice, labeled_supervised, ramp_weight, require_unlabeled


@dataclass
class EntropyMinOptions:
    """entropy_on: all (original) | unlabeled."""

    entropy_on: str = "all"


@METHODS.register("entropy_min")
class EntropyMinimization(Method):
    name = "entropy_min"
    num_networks = (1, 1)
    Options = EntropyMinOptions

    def __init__(self, cfg, networks):
        super().__init__(cfg, networks)
        check_choice(self, "entropy_on", self.options.entropy_on, ("all", "unlabeled"))

    def training_step(self, batch, step: int) -> StepOutput:
        if self.options.entropy_on == "unlabeled":
            require_unlabeled(batch, 1, self.name)
        logits = self.modules["net1"](batch.image)
        sup = labeled_supervised(self, logits, batch)
        rows = logits if self.options.entropy_on == "all" else logits[batch.n_labeled:]
        ent = normalized_entropy(rows.softmax(dim=1))
        weight = ramp_weight(self, step)
        loss = sup + weight * ent
        logs = {"loss/sup": sup.detach(), "loss/entropy": ent.detach(), "weight/consistency": weight}
        return StepOutput(losses={"seg": loss}, logs=logs)
