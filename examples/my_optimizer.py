"""A user's optimizer, written without ncprop, to be gated from the command line:

    ncprop gate examples/my_optimizer.py:make --expect plateaus

``SignMomentumW`` is sign descent on a momentum buffer with decoupled weight decay (a SignumW
written from scratch). ncprop predicts that NC0 plateaus under it.
"""

import torch


class SignMomentumW(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-3, beta=0.9, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, beta=beta, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("buf", torch.zeros_like(p))
                buf.mul_(group["beta"]).add_(p.grad, alpha=1 - group["beta"])
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(torch.sign(buf), alpha=-group["lr"])
        return loss


def make(params, lr, weight_decay, momentum=0.9):
    """The factory ncprop calls: canonical hyperparameters by name (``momentum`` is our beta)."""
    return SignMomentumW(params, lr=lr, beta=momentum, weight_decay=weight_decay)
