"""The diffusion model families: one adapter each (``base.DiffusionFamily``), registered in :data:`FAMILIES`.

Adding a family: a module beside ``sd.py``/``sdxl.py`` with a :class:`DiffusionFamily` subclass, and its instance in
:data:`FAMILIES` below. Everything else (loading, training, caching, validation, saving) asks the adapter.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from visalign.models.families.base import DiffusionFamily
from visalign.models.families.sd import SDFamily
from visalign.models.families.sdxl import SDXLFamily

#: Every family by name, in detection order (the first whose ``matches`` accepts a denoiser config wins).
FAMILIES: dict[str, DiffusionFamily] = {family.name: family for family in (SDXLFamily(), SDFamily())}


def get_family(name: str | DiffusionFamily) -> DiffusionFamily:
    """The adapter of family ``name`` (an adapter passes through); a ValueError lists the known names."""
    if isinstance(name, DiffusionFamily):
        return name
    if name not in FAMILIES:
        raise ValueError(f"unknown diffusion model family {name!r}; expected one of {sorted(FAMILIES)}")
    return FAMILIES[name]


def detect_family(denoiser_config: Mapping[str, Any]) -> DiffusionFamily:
    """The family whose adapter accepts this denoiser (UNet) config."""
    for family in FAMILIES.values():
        if family.matches(denoiser_config):
            return family
    raise ValueError(f"no diffusion model family matches this denoiser config (known families: {sorted(FAMILIES)}); "
                     f"addition_embed_type={denoiser_config.get('addition_embed_type')!r}")


def family_of_checkpoint(model: str | os.PathLike, *, revision: str | None = None) -> DiffusionFamily:
    """The family of a diffusers checkpoint (folder or hub id): the first whose denoiser subfolder holds a config
    that it :meth:`~DiffusionFamily.matches`; a ValueError names the subfolders looked in and the known families."""
    from diffusers.configuration_utils import ConfigMixin

    class DenoiserConfig(ConfigMixin):  # reads any diffusers model's config.json
        config_name = "config.json"

    configs: dict[str, Mapping[str, Any] | None] = {}
    for family in FAMILIES.values():
        subfolder = family.denoiser_subfolder
        if subfolder not in configs:
            try:
                configs[subfolder] = DenoiserConfig.load_config(model, subfolder=subfolder, revision=revision)
            except OSError:
                configs[subfolder] = None
        if configs[subfolder] is not None and family.matches(configs[subfolder]):
            return family
    found = [subfolder for subfolder, config in configs.items() if config is not None]
    raise ValueError(f"{os.fspath(model)}: no diffusion model family matches its denoiser (a config in "
                     f"{found or 'none'} of the subfolders {sorted(configs)}); known families: {sorted(FAMILIES)}")


def family_of_text_encoders(count: int) -> DiffusionFamily:
    """The one family that conditions on ``count`` text encoders, for callers that hold encoders but no
    ``components.adapter``; a ValueError when none or several do (then ask the model's adapter)."""
    matches = [family for family in FAMILIES.values() if family.num_text_encoders == count]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ValueError(f"{count} text encoders fit several families ({', '.join(f.name for f in matches)}); use "
                         "the model's adapter (components.adapter)")
    counts = " or ".join(f"{f.num_text_encoders} ({f.name})" for f in sorted(FAMILIES.values(),
                                                                              key=lambda f: f.num_text_encoders))
    raise ValueError(f"need {counts} text encoders; got {count}")


__all__ = ["FAMILIES", "DiffusionFamily", "detect_family", "family_of_checkpoint", "family_of_text_encoders",
           "get_family"]
