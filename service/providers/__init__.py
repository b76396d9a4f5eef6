"""Provider adapters: each turns a job into its provider's real request and its callbacks back."""

from __future__ import annotations

from collections.abc import Mapping

from service.providers import apiframe, segmind, trinetra
from service.providers.base import Adapter

ADAPTERS: Mapping[str, Adapter] = {
    "trinetra": trinetra.ADAPTER,
    "apiframe": apiframe.ADAPTER,
    "segmind": segmind.ADAPTER,
}

__all__ = ["ADAPTERS", "Adapter"]
