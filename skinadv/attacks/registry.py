"""The attacks by name: ``ATTACKS[name](model, x, y, **kwargs) -> x_adv``."""

from __future__ import annotations

from skinadv.attacks._common import AttackFn
from skinadv.attacks.apgd import apgd_ce, apgd_dlr
from skinadv.attacks.apgd_t import apgd_t
from skinadv.attacks.fgsm import fgsm
from skinadv.attacks.mifgsm import mifgsm
from skinadv.attacks.pgd import pgd

#: name -> attack function. A new entry is picked up by the parametrized tests.
ATTACKS: dict[str, AttackFn] = {
    "fgsm": fgsm,
    "pgd": pgd,
    "mifgsm": mifgsm,
    "apgd_ce": apgd_ce,
    "apgd_dlr": apgd_dlr,
    "apgd_t": apgd_t,
}
