"""Gradient attacks as pure functions over a batch, plus ``craft`` for whole data sets.

Every attack takes ``(model, x, y, *, eps, ...)`` with x (N, 3, H, W) float in [0, 1] and
returns a detached x_adv in [0, 1] on x's device, within ``eps`` (pixel units) of x.
"""

from skinadv.attacks._common import NORMS, AttackFn, _l2_project, _linf_project
from skinadv.attacks.apgd import apgd_ce, apgd_dlr, dlr_loss
from skinadv.attacks.apgd_t import apgd_t, dlr_targeted_loss
from skinadv.attacks.craft import craft, eval_mode, resolve_attack
from skinadv.attacks.fgsm import fgsm
from skinadv.attacks.mifgsm import mifgsm
from skinadv.attacks.pgd import pgd
from skinadv.attacks.registry import ATTACKS, attack_name

__all__ = [
    "ATTACKS",
    "NORMS",
    "AttackFn",
    "_l2_project",
    "_linf_project",
    "apgd_ce",
    "apgd_dlr",
    "apgd_t",
    "attack_name",
    "craft",
    "dlr_loss",
    "dlr_targeted_loss",
    "eval_mode",
    "fgsm",
    "mifgsm",
    "pgd",
    "resolve_attack",
]
