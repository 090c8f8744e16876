"""The contract between the trainer and a supervision strategy.

A method is only its networks and its losses.  It never calls backward, an optimizer, a
scheduler or a checkpoint writer: the trainer owns those.  Per iteration the trainer calls

    out = method.training_step(batch, step)        # under autocast when AMP is on
    for group in method.optimizer_groups():         # in declaration order
        loss = out.losses[group.name]               # a tensor, or a callable returning one
        zero the group's grads; loss.backward(); step the group's optimizer
    method.after_step(step)                         # e.g. EMA teacher updates

A loss may be a zero-argument callable when it must be computed after the earlier groups
have stepped (the adversarial method's discriminator loss is computed on the segmenter's
output *after* its update, as in the original).
"""
import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from ..config import ExperimentConfig, from_dict
from ..errors import ConfigError
from ..registry import Registry

METHODS = Registry("method")

LossOrThunk = Union[torch.Tensor, Callable[[], torch.Tensor]]


@dataclass
class StepOutput:
    losses: Dict[str, LossOrThunk]  # one total loss per optimizer group name
    # scalars for TensorBoard (each loss term, weights): floats, or detached 0-dim tensors, which
    # run_iteration reads back in one copy after the backward is queued (a float() here would make
    # the host wait for the device before the backward)
    logs: Dict[str, Union[float, torch.Tensor]] = field(default_factory=dict)
    images: Dict[str, torch.Tensor] = field(default_factory=dict)  # optional (N, C, H, W) in [0, 1] for TensorBoard


@dataclass
class OptimizerGroup:
    name: str
    params: List[nn.Parameter]
    # None: the experiment's train.optimizer / lr / momentum / weight_decay and its lr schedule.
    # Otherwise a dict like {"type": "adam", "lr": 1e-4, "betas": (0.9, 0.99), "schedule": "constant"}.
    override: Optional[dict] = None


@dataclass
class NoOptions:
    """Methods without options of their own."""


class Method:
    """Base class.  Subclasses set `name`, `num_networks` and optionally `Options`."""

    name: str = ""
    num_networks: Tuple[int, int] = (1, 1)  # (min, max) number of backbones in model.networks
    Options: type = NoOptions
    needs_unlabeled: bool = True  # False: the sampler yields labeled data only
    # train.cuda_graphs replays each student's captured forward and backward: a method may call each
    # student once per training_step, on a tensor shaped like graph_input(batch); False if it cannot
    graphable: bool = True

    def __init__(self, cfg: ExperimentConfig, networks: List[nn.Module]):
        lo, hi = self.num_networks
        if not lo <= len(networks) <= hi:
            want = str(lo) if lo == hi else f"{lo} to {hi}"
            raise ConfigError(
                f"method {self.name!r} trains {want} network(s) but model.networks lists {len(networks)}: "
                f"{cfg.model.networks}"
            )
        self.cfg = cfg
        self.options = from_dict(self.Options, cfg.method.options, f"method {self.name!r} options", "method.options.")
        # Everything whose state is checkpointed lives here (students, teachers, discriminators).
        self.modules = nn.ModuleDict({f"net{i + 1}": net for i, net in enumerate(networks)})

    def resolved_config(self) -> ExperimentConfig:
        """The config with every method option spelled out, defaults included: a run directory's
        config.yaml must train the same way after a later release changes a default."""
        method = dataclasses.replace(self.cfg.method, options=dataclasses.asdict(self.options))
        return dataclasses.replace(self.cfg, method=method)

    # ---- to override ------------------------------------------------------------------------
    def training_step(self, batch, step: int) -> StepOutput:
        raise NotImplementedError

    def optimizer_groups(self) -> List[OptimizerGroup]:
        """Default: one group over every student network."""
        params = [p for name, net in self.students().items() for p in net.parameters()]
        return [OptimizerGroup("seg", params)]

    def after_step(self, step: int) -> None:
        """Called once per iteration after every optimizer stepped (EMA updates go here)."""

    def students(self) -> Dict[str, nn.Module]:
        """The networks trained by gradient descent (default: net1..netN)."""
        return {k: v for k, v in self.modules.items() if k.startswith("net")}

    def eval_networks(self) -> Dict[str, nn.Module]:
        """Networks validated and checkpointed as `best_<name>` (default: the students)."""
        return self.students()

    def no_grad_networks(self) -> Dict[str, nn.Module]:
        """Networks that `training_step` runs only without gradients (EMA teachers); under
        train.cuda_graphs their forwards replay from a graph per input shape (default: none)."""
        return {}

    def graph_input(self, batch) -> torch.Tensor:
        """A tensor like the one `training_step` calls every student with, for train.cuda_graphs to
        capture them with (default: the whole batch)."""
        return batch.image

    # ---- shared helpers ---------------------------------------------------------------------
    def train(self) -> None:
        self.modules.train()

    def to(self, device) -> "Method":
        self.modules.to(device)
        return self

    def state_dict(self) -> dict:
        return self.modules.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.modules.load_state_dict(state)

    @classmethod
    def option_names(cls) -> List[str]:
        return [f.name for f in dataclasses.fields(cls.Options)]
