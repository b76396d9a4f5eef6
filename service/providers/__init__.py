"""Provider adapters: each turns a job into its provider's real request, and its answers back.

``CALLBACK_ADAPTERS`` report on jobs by callback; ``HELD_ADAPTERS`` answer the held submit request
itself (see :mod:`service.providers.base`). ``ADAPTERS`` names them all.
"""

from __future__ import annotations

from collections.abc import Mapping

from service.providers import apiframe, segmind, trinetra
from service.providers.base import CallbackAdapter, HeldAdapter

CALLBACK_ADAPTERS: Mapping[str, CallbackAdapter] = {
    "trinetra": trinetra.ADAPTER,
    "apiframe": apiframe.ADAPTER,
}
HELD_ADAPTERS: Mapping[str, HeldAdapter] = {"segmind": segmind.ADAPTER}
ADAPTERS: Mapping[str, CallbackAdapter | HeldAdapter] = {**CALLBACK_ADAPTERS, **HELD_ADAPTERS}

__all__ = ["ADAPTERS", "CALLBACK_ADAPTERS", "HELD_ADAPTERS", "CallbackAdapter", "HeldAdapter"]
