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


def _bare(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "")


def attack_name(text: str) -> str:
    """The registry's name for an attack as people spell it: ``apgd-ce``, ``APGD_CE`` and
    ``apgdce`` are ``apgd_ce``; ``mi-fgsm`` is ``mifgsm``.

    Raises:
        ValueError: no attack of that name, listing the available ones.
    """
    for name in ATTACKS:
        if _bare(name) == _bare(text):
            return name
    raise ValueError(f"unknown attack {text!r}; choose one of {', '.join(ATTACKS)}")
