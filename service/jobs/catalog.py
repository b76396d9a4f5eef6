"""The five Kling models reelhook serves, as declared by their providers' pages (docs/seeds/)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.jobs.modelspec import Input, ModelSpec, Param, Price, Rule

_AXES = ("horizontal", "vertical", "pan", "tilt", "roll", "zoom")
_ASPECT_RATIOS = ("16:9", "9:16", "1:1")


def _camera_control_problem(value: Any) -> str | None:
    unknown = set(value) - {"type", "config"}
    if unknown:
        return f"unknown key {sorted(unknown)[0]!r} (accepted: type, config)"
    if "type" in value and not isinstance(value["type"], str):
        return "type must be a string"
    config = value.get("config", {})
    if not isinstance(config, dict):
        return "config must be an object"
    for axis, amount in config.items():
        if axis not in _AXES:
            return f"config.{axis} is not an axis (accepted: {', '.join(_AXES)})"
        if isinstance(amount, bool) or not isinstance(amount, int | float):
            return f"config.{axis} must be a number"
        if not -10 <= amount <= 10:
            return f"config.{axis} must be between -10 and 10"
    return None


def _url_problem(value: Any) -> str | None:
    if not value.startswith(("https://", "http://")):
        return "must be an http(s) URL"
    return None


_URL_SCHEMA = {"pattern": "^https?://"}

_CAMERA_CONTROL_SCHEMA: dict[str, Any] = {
    "properties": {
        "type": {"type": "string"},
        "config": {
            "type": "object",
            "properties": {
                axis: {"type": "number", "minimum": -10, "maximum": 10} for axis in _AXES
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}


def _given(name: str) -> dict[str, Any]:
    """JSON Schema: ``name`` is set (an optional parameter sent as null counts as absent)."""
    return {"required": [name], "properties": {name: {"not": {"type": "null"}}}}


def _prompt(max_length: int = 2500) -> Param:
    return Param("prompt", "string", "What the video shows.", required=True, max_length=max_length)


def _negative_prompt(max_length: int = 2500) -> Param:
    return Param("negative_prompt", "string", "What to avoid.", max_length=max_length)


def _image_url(description: str = "Start frame for image-to-video.") -> Param:
    return Param("image_url", "string", description, check=_url_problem, check_schema=_URL_SCHEMA)


def _last_frame_url(description: str) -> Param:
    return Param(
        "last_frame_url", "string", description, check=_url_problem, check_schema=_URL_SCHEMA
    )


def _cfg_scale(default: float | None, description: str = "Prompt adherence, 0-1.") -> Param:
    return Param("cfg_scale", "number", description, default=default, minimum=0, maximum=1)


# Trinetra's tables give cfg_scale's 0.5 in the description, not as a sent default ("—" in the
# Default column), and say it "may be ignored by Kling 2.x/3.0": sent only when set.
_TRINETRA_CFG_SCALE = _cfg_scale(
    None, "Prompt adherence, 0-1 (the provider's default is 0.5). Sent only when set."
)


_CAMERA_CONTROL = Param(
    "camera_control",
    "object",
    "Camera movement {type, config: {horizontal, vertical, pan, tilt, roll, zoom}}, each -10..10.",
    check=_camera_control_problem,
    check_schema=_CAMERA_CONTROL_SCHEMA,
)
# Trinetra's pricing text says "pass resolution in your request" but no parameter table lists it
# or a default, so reelhook sends it only when the caller chose one; the estimate then states the
# resolution it assumed (docs/providers.md, Trinetra).
_RESOLUTION = Param(
    "resolution",
    "string",
    "Output resolution; sets the price. Sent only when set: the provider's default applies "
    "otherwise, and the cost estimate states the resolution it assumed.",
    choices=("720p", "1080p"),
)


def _last_frame_without_image(data: Input) -> tuple[str, str] | None:
    if "last_frame_url" in data and "image_url" not in data:
        return ("last_frame_url", "requires image_url (the first frame)")
    return None


def _last_frame_not_5s(data: Input) -> tuple[str, str] | None:
    if "last_frame_url" in data and data.get("duration") != 5:
        return ("last_frame_url", "is supported on 5 s clips only (set duration to 5)")
    return None


_needs_image_for_last_frame = Rule(
    "last_frame_url requires image_url",
    _last_frame_without_image,
    {"if": _given("last_frame_url"), "then": _given("image_url")},
)
_last_frame_only_5s = Rule(
    "last_frame_url is for 5 s clips only",
    _last_frame_not_5s,
    # duration's default is 5: absent (or null) is a 5 s clip.
    {
        "if": _given("last_frame_url"),
        "then": {"properties": {"duration": {"enum": [5, None]}}},
    },
)


_TRINETRA_LAST_FRAME_RULES: tuple[Rule, ...] = (_needs_image_for_last_frame, _last_frame_only_5s)

_CALLBACK_URL = "pass callback_url next to input to hear this job's events"
_TRINETRA_RESERVED = {
    "callback_url": _CALLBACK_URL,
    "external_task_id": "send an Idempotency-Key header to make the request idempotent",
}
_APIFRAME_RESERVED = {
    "webhookUrl": _CALLBACK_URL,
    "webhookEvents": "subscriptions choose event types",
}


def _assumed_resolution(data: Input) -> str:
    """The resolution a Trinetra job is priced at when the caller chose none: 720p, the base
    price, except with ``mode: pro``, which is Kling's 1080p tier (docs/providers.md)."""
    return "1080p" if data.get("mode") == "pro" else "720p"


def _trinetra_price(per_second: Mapping[str, float]) -> Price:
    def resolution(data: Input) -> str:
        return str(data.get("resolution") or _assumed_resolution(data))

    return Price(
        unit="credits",
        description="Credits (1 credit = INR 1) per second of output, by resolution; "
        "billed on success. Without a resolution the estimate assumes 720p (1080p with mode "
        "pro) and says so.",
        table=dict(per_second),
        estimate=lambda data: per_second[resolution(data)] * data["duration"],
        assumes=lambda data: {} if "resolution" in data else {"resolution": resolution(data)},
    )


def _trinetra_duration(maximum: int) -> Param:
    return Param(
        "duration",
        "number",
        f"Clip length in seconds (1-{maximum}).",
        default=5,
        minimum=1,
        maximum=maximum,
    )


_TRINETRA_LAST_FRAME = _last_frame_url(
    "Last frame for image-to-video; requires image_url; 5 s clips only."
)


def _i2v_without_image(data: Input) -> tuple[str, str] | None:
    if data.get("mode") == "i2v" and "image_url" not in data:
        return ("image_url", "is required in i2v mode")
    return None


_i2v_needs_image = Rule(
    "mode i2v requires image_url",
    _i2v_without_image,
    {
        "if": {"required": ["mode"], "properties": {"mode": {"const": "i2v"}}},
        "then": _given("image_url"),
    },
)


def _v3_mode_default(data: Input) -> Input:
    return {"mode": "i2v" if "image_url" in data else "t2v"}


TRINETRA_V25 = ModelSpec(
    id="trinetra/kling-v2.5",
    provider="trinetra",
    description="Kling V2.5 text/image-to-video with standard and pro modes (Trinetra).",
    params=(
        _prompt(),
        _image_url("Optional start image for image-to-video."),
        _TRINETRA_LAST_FRAME,
        _trinetra_duration(10),
        Param(
            "aspect_ratio", "string", "Output aspect ratio.", default="9:16", choices=_ASPECT_RATIOS
        ),
        # The page's Default column reads "stdstdpro" (garbled): std|pro, default not certain,
        # so the provider's own default applies unless the caller chooses.
        Param(
            "mode",
            "string",
            "Quality mode, std or pro. Sent only when set (the page's default is garbled).",
            choices=("std", "pro"),
        ),
        _RESOLUTION,
        _negative_prompt(),
        _TRINETRA_CFG_SCALE,
        _CAMERA_CONTROL,
    ),
    price=_trinetra_price({"720p": 10, "1080p": 15}),
    rules=_TRINETRA_LAST_FRAME_RULES,
    notes=("cfg_scale may be ignored by Kling 2.x/3.0.",),
    reserved=_TRINETRA_RESERVED,
)

TRINETRA_V3 = ModelSpec(
    id="trinetra/kling-v3",
    provider="trinetra",
    description="Kling V3 text-to-video and image-to-video (Trinetra).",
    params=(
        _prompt(),
        Param(
            "mode",
            "string",
            "t2v or i2v; defaults to i2v when image_url is set, else t2v.",
            choices=("t2v", "i2v"),
        ),
        _image_url("Start image (required for i2v mode)."),
        _TRINETRA_LAST_FRAME,
        _trinetra_duration(10),
        Param(
            "aspect_ratio", "string", "Output aspect ratio.", default="16:9", choices=_ASPECT_RATIOS
        ),
        _RESOLUTION,
        _negative_prompt(),
        _TRINETRA_CFG_SCALE,
        _CAMERA_CONTROL,
    ),
    price=_trinetra_price({"720p": 19, "1080p": 30}),
    rules=(*_TRINETRA_LAST_FRAME_RULES, _i2v_needs_image),
    defaults_from=_v3_mode_default,
    notes=("cfg_scale may be ignored by Kling 2.x/3.0.",),
    reserved=_TRINETRA_RESERVED,
)

TRINETRA_V3_OMNI = ModelSpec(
    id="trinetra/kling-v3-omni",
    provider="trinetra",
    description="Kling V3 Omni video generation with extended duration support (Trinetra).",
    params=(
        _prompt(),
        _image_url("Optional start image for image-to-video."),
        _TRINETRA_LAST_FRAME,
        _trinetra_duration(15),
        Param(
            "aspect_ratio", "string", "Output aspect ratio.", default="16:9", choices=_ASPECT_RATIOS
        ),
        _RESOLUTION,
        _negative_prompt(),
        _TRINETRA_CFG_SCALE,
        _CAMERA_CONTROL,
    ),
    price=_trinetra_price({"720p": 29, "1080p": 46}),
    rules=_TRINETRA_LAST_FRAME_RULES,
    notes=("cfg_scale may be ignored by Kling 2.x/3.0.",),
    reserved=_TRINETRA_RESERVED,
)

_APIFRAME_CREDITS = {"5": 4.0, "10": 7.0}

APIFRAME_TURBO_PRO = ModelSpec(
    id="apiframe/kling-2.5-turbo-pro",
    provider="apiframe",
    description="Kling 2.5 Turbo Pro: fast, low-cost video with end-image support (apiframe).",
    params=(
        _prompt(4000),
        Param(
            "duration", "integer", "Clip length in seconds: 5 or 10.", default=5, choices=(5, 10)
        ),
        Param("aspect_ratio", "string", "Output aspect ratio.", choices=_ASPECT_RATIOS),
        _image_url("First frame (klingParams.start_image)."),
        _last_frame_url("Last frame (klingParams.end_image); requires image_url."),
        _negative_prompt(2500),
        _cfg_scale(None),
    ),
    price=Price(
        unit="credits",
        description="apiframe credits per clip, by duration; refunded on failure.",
        table=_APIFRAME_CREDITS,
        estimate=lambda data: _APIFRAME_CREDITS[str(data["duration"])],
    ),
    rules=(_needs_image_for_last_frame,),
    notes=("cfg_scale is sent as klingParams.guidance_scale, the name apiframe's schema takes.",),
    reserved=_APIFRAME_RESERVED,
)

_SEGMIND_USD = {"5": 0.44, "10": 0.88}


SEGMIND_TURBO = ModelSpec(
    id="segmind/kling-2.5-turbo",
    provider="segmind",
    description="Kling 2.5 Turbo via Segmind's synchronous API (~134 s per generation).",
    params=(
        _prompt(),
        Param(
            "negative_prompt",
            "string",
            "What to avoid.",
            default="no dark tones, no blur, no distort",
            max_length=2500,
        ),
        _cfg_scale(0.7),
        # Segmind's own example sends "duration": "10" (a string) while its table says integer:
        # both are accepted; reelhook stores and sends the integer the table documents.
        Param(
            "duration",
            "integer",
            'Clip length in seconds: 5 or 10 (also "5" or "10", as Segmind\'s example sends it).',
            default=10,
            choices=(5, 10),
            numeric_strings=True,
        ),
        Param(
            "mode", "string", "Quality mode; only pro is offered.", default="pro", choices=("pro",)
        ),
        Param(
            "aspect_ratio",
            "string",
            "Frame size; ignored when image_url is given.",
            default="16:9",
            choices=_ASPECT_RATIOS,
        ),
        _image_url("Start image."),
        _last_frame_url("Final frame (tail_image_url); pro mode only, requires image_url."),
    ),
    price=Price(
        unit="usd",
        description="US dollars per generation, by duration.",
        table=_SEGMIND_USD,
        estimate=lambda data: _SEGMIND_USD[str(data["duration"])],
    ),
    # tail_image_url is pro-only on Segmind; pro is the only mode it offers, so no rule is needed.
    rules=(_needs_image_for_last_frame,),
    notes=(
        "aspect_ratio is ignored when image_url is given: the video follows the image.",
        "last_frame_url (Segmind's tail_image_url) is pro-only, and pro is the only mode.",
    ),
)

MODELS: Mapping[str, ModelSpec] = {
    spec.id: spec
    for spec in (TRINETRA_V25, TRINETRA_V3, TRINETRA_V3_OMNI, APIFRAME_TURBO_PRO, SEGMIND_TURBO)
}
