"""The registry of local descriptors: each is one module here and one entry in DESCRIBERS."""

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator

from .base import Describer, quantize_unit
from .hardnet import HardNet8Describer
from .sift import RootSift, Sift
from .xfeat import XFeat

DESCRIBERS: dict[str, type[Describer]] = {
    describer.name: describer for describer in (RootSift, Sift, XFeat, HardNet8Describer)
}


def _registered(name: str) -> str:
    if name not in DESCRIBERS:
        raise ValueError(f"unknown local descriptor {name!r}; choose one of {', '.join(DESCRIBERS)}")
    return name


DescriberName = Annotated[str, AfterValidator(_registered)]  # a name in DESCRIBERS, as an option's type


def create_describer(name: str, models_dir: Path) -> Describer:
    return DESCRIBERS[_registered(name)](models_dir)


__all__ = ["DESCRIBERS", "DescriberName", "Describer", "create_describer", "quantize_unit"]
