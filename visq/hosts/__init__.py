"""Hosts: one per model family. ``detect`` picks the host for an object without importing other families."""

from __future__ import annotations

from typing import Any

from torch import nn

from visq.hosts.base import Host


def _from_library(obj: Any, library: str) -> bool:
    return any(cls.__module__.split(".")[0] == library for cls in type(obj).__mro__)


def detect(obj: Any) -> Host:
    """The host for a diffusers pipeline or model, a timm model, or any other ``nn.Module``."""
    if _from_library(obj, "diffusers"):
        from visq.hosts.diffusers import DiffusersHost

        return DiffusersHost()
    if _from_library(obj, "timm"):
        from visq.hosts.timm import TimmHost

        return TimmHost()
    if isinstance(obj, nn.Module):
        return Host()
    raise TypeError(
        f"visq cannot quantize a {type(obj).__name__}: pass a diffusers pipeline, a timm model or a torch.nn.Module"
    )
