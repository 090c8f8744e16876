"""SSL4MIS "deep co-training" (`train_deep_co_training_2D.py`; named after Qiao et al., ECCV
2018, DCN in the Semi-Mamba-UNet tables): despite the name, one network with a rotation
consistency.  The unlabeled rows are also fed rotated by k * 90 degrees (k random per step), and
0.5 [MSE(sg(p(rot U)), rot p(U)) + MSE(p(rot U), sg(rot p(U)))] is added with the ramped weight.
Both directions get a gradient, each against a detached partner.
"""
import torch

from ssl_mamba.engine.method import METHODS, Method, StepOutput
from ssl_mamba.errors import ConfigError
from ssl_mamba.losses import softmax_mse

from ._common import labeled_supervised, ramp_weight, require_unlabeled


def rotation_consistency(probs_u: torch.Tensor, probs_rot: torch.Tensor, k: int) -> torch.Tensor:
    """0.5 [MSE(sg(p_rot), rot p) + MSE(p_rot, sg(rot p))]; probs_* (U, K, H, W), rot = rot90^k on (H, W)."""
    rotated = torch.rot90(probs_u, k, dims=(2, 3))
    return 0.5 * (softmax_mse(probs_rot.detach(), rotated) + softmax_mse(probs_rot, rotated.detach()))


@METHODS.register("co_training")
class DeepCoTraining(Method):
    name = "co_training"
    num_networks = (1, 1)
    graphable = False  # the student runs twice: on the batch, then on the rotated unlabeled rows

    def training_step(self, batch, step: int) -> StepOutput:
        require_unlabeled(batch, 1, self.name)
        height, width = batch.image.shape[-2:]
        if height != width:
            raise ConfigError(f"method 'co_training' rotates patches by 90 degrees and needs square data.patch_size, got {[height, width]}")
        net = self.modules["net1"]
        logits = net(batch.image)
        sup = labeled_supervised(self, logits, batch)
        k = int(torch.randint(0, 4, (1,)))
        rot_logits = net(torch.rot90(batch.unlabeled_image, k, dims=(2, 3)))
        cons = rotation_consistency(logits[batch.n_labeled:].softmax(dim=1), rot_logits.softmax(dim=1), k)
        weight = ramp_weight(self, step)
        loss = sup + weight * cons
        logs = {"loss/sup": sup.detach(), "loss/consistency": cons.detach(), "weight/consistency": weight}
        return StepOutput(losses={"seg": loss}, logs=logs)
