"""The declarative model specs (docs/contract.md §1) against the providers' own pages
(docs/seeds/)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from service.core.errors import ValidationFailed
from service.jobs.catalog import MODELS

pytestmark = pytest.mark.anyio

V25 = "trinetra/kling-v2.5"
V3 = "trinetra/kling-v3"
OMNI = "trinetra/kling-v3-omni"
APIFRAME = "apiframe/kling-2.5-turbo-pro"
SEGMIND = "segmind/kling-2.5-turbo"

IMAGE = "https://example.org/first.png"
LAST = "https://example.org/last.png"
CAMERA = {"type": "simple", "config": {"horizontal": -10, "zoom": 10, "pan": 2.5}}


def _with_prompt(**extra: Any) -> dict[str, Any]:
    return {"prompt": "A drone shot over a misty mountain range", **extra}


# (model, input, what the validated input must contain, parameters it must not gain)
VALID: list[tuple[str, dict[str, Any], dict[str, Any], set[str]]] = [
    (
        V25,
        _with_prompt(),
        {"duration": 5, "aspect_ratio": "9:16"},
        # Not in the page's Default column (issue 15): left to the provider unless set.
        {
            "image_url",
            "last_frame_url",
            "camera_control",
            "negative_prompt",
            "mode",
            "resolution",
            "cfg_scale",
        },
    ),
    (
        V25,
        _with_prompt(duration=10, mode="pro", aspect_ratio="1:1", resolution="1080p"),
        {"duration": 10, "mode": "pro", "aspect_ratio": "1:1", "resolution": "1080p"},
        set(),
    ),
    (V25, _with_prompt(duration=1), {"duration": 1}, set()),
    (V25, _with_prompt(duration=7.5), {"duration": 7.5}, set()),
    (
        V25,
        _with_prompt(image_url=IMAGE, last_frame_url=LAST),
        {"image_url": IMAGE, "last_frame_url": LAST, "duration": 5},
        set(),
    ),
    (V25, _with_prompt(camera_control=CAMERA), {"camera_control": CAMERA}, set()),
    (V25, _with_prompt(cfg_scale=0), {"cfg_scale": 0}, set()),
    (V25, _with_prompt(cfg_scale=1), {"cfg_scale": 1}, set()),
    (V25, _with_prompt(negative_prompt="blur"), {"negative_prompt": "blur"}, set()),
    (
        V3,
        _with_prompt(),
        {"mode": "t2v", "duration": 5, "aspect_ratio": "16:9"},
        {"image_url", "resolution", "cfg_scale"},
    ),
    (V3, _with_prompt(image_url=IMAGE), {"mode": "i2v", "image_url": IMAGE}, set()),
    (V3, _with_prompt(image_url=IMAGE, mode="t2v"), {"mode": "t2v"}, set()),
    (
        V3,
        _with_prompt(mode="i2v", image_url=IMAGE, last_frame_url=LAST, duration=5),
        {"mode": "i2v", "last_frame_url": LAST},
        set(),
    ),
    (V3, _with_prompt(duration=10, resolution="1080p"), {"duration": 10}, set()),
    (
        V3,
        _with_prompt(aspect_ratio="9:16", negative_prompt="blur", cfg_scale=0.2),
        {"aspect_ratio": "9:16", "negative_prompt": "blur", "cfg_scale": 0.2},
        set(),
    ),
    (V3, _with_prompt(camera_control=CAMERA, duration=1), {"camera_control": CAMERA}, set()),
    (
        OMNI,
        _with_prompt(),
        {"duration": 5, "aspect_ratio": "16:9"},
        {"mode", "resolution", "cfg_scale"},
    ),
    (OMNI, _with_prompt(duration=15), {"duration": 15}, set()),
    (OMNI, _with_prompt(duration=12), {"duration": 12}, set()),
    (OMNI, _with_prompt(duration=1, resolution="1080p"), {"duration": 1}, set()),
    (
        OMNI,
        _with_prompt(
            aspect_ratio="1:1", negative_prompt="blur", cfg_scale=1, camera_control=CAMERA
        ),
        {"aspect_ratio": "1:1", "negative_prompt": "blur", "cfg_scale": 1},
        set(),
    ),
    (
        OMNI,
        _with_prompt(image_url=IMAGE, last_frame_url=LAST),
        {"last_frame_url": LAST, "duration": 5},
        set(),
    ),
    (APIFRAME, _with_prompt(), {"duration": 5}, {"aspect_ratio", "cfg_scale"}),
    (
        APIFRAME,
        _with_prompt(duration=10, aspect_ratio="9:16", cfg_scale=0.3),
        {"duration": 10, "aspect_ratio": "9:16", "cfg_scale": 0.3},
        set(),
    ),
    (APIFRAME, _with_prompt(aspect_ratio="1:1"), {"aspect_ratio": "1:1"}, set()),
    (APIFRAME, {"prompt": "x" * 4000}, {"prompt": "x" * 4000}, set()),
    (
        APIFRAME,
        _with_prompt(image_url=IMAGE, last_frame_url=LAST, duration=10),
        {"image_url": IMAGE, "last_frame_url": LAST, "duration": 10},
        set(),
    ),
    (APIFRAME, _with_prompt(negative_prompt="n" * 2500), {"negative_prompt": "n" * 2500}, set()),
    (
        SEGMIND,
        _with_prompt(),
        {"duration": 10, "mode": "pro", "aspect_ratio": "16:9", "cfg_scale": 0.7},
        {"image_url", "last_frame_url"},
    ),
    (SEGMIND, _with_prompt(duration=5, aspect_ratio="1:1"), {"duration": 5}, set()),
    (
        SEGMIND,
        _with_prompt(negative_prompt="blur", cfg_scale=0, aspect_ratio="9:16"),
        {"negative_prompt": "blur", "cfg_scale": 0, "aspect_ratio": "9:16"},
        set(),
    ),
    (
        SEGMIND,
        _with_prompt(image_url=IMAGE),
        {"negative_prompt": "no dark tones, no blur, no distort", "image_url": IMAGE},
        {"last_frame_url"},
    ),
    (
        SEGMIND,
        _with_prompt(image_url=IMAGE, last_frame_url=LAST, mode="pro"),
        {"image_url": IMAGE, "last_frame_url": LAST, "mode": "pro"},
        set(),
    ),
]


@pytest.mark.parametrize(
    ("model", "raw", "expected", "absent"),
    VALID,
    ids=[f"{case[0]}-{i}" for i, case in enumerate(VALID)],
)
def test_valid_input_is_accepted_with_defaults_applied(
    model: str, raw: dict[str, Any], expected: dict[str, Any], absent: set[str]
) -> None:
    clean = MODELS[model].validate(raw)

    assert {k: clean.get(k) for k in expected} == expected
    assert clean["prompt"] == raw["prompt"]
    assert all(raw[k] == clean[k] for k in raw), "given values must pass through unchanged"
    assert not absent & set(clean), f"{sorted(absent & set(clean))} appeared from nowhere"
    assert set(clean) <= {p.name for p in MODELS[model].params}


# (model, input, the one field details["fields"] must name)
INVALID: list[tuple[str, dict[str, Any], str]] = [
    # Trinetra Kling V2.5
    (V25, {}, "input.prompt"),
    (V25, {"prompt": "   "}, "input.prompt"),
    (V25, {"prompt": 42}, "input.prompt"),
    (V25, _with_prompt(duration=11), "input.duration"),
    (V25, _with_prompt(duration=0), "input.duration"),
    (V25, _with_prompt(duration="5"), "input.duration"),
    (V25, _with_prompt(duration=True), "input.duration"),
    (V25, _with_prompt(duration=float("nan")), "input.duration"),
    (V25, _with_prompt(aspect_ratio="4:3"), "input.aspect_ratio"),
    (V25, _with_prompt(mode="ultra"), "input.mode"),
    (V25, _with_prompt(mode="t2v"), "input.mode"),
    (V25, _with_prompt(resolution="4k"), "input.resolution"),
    (V25, _with_prompt(image_url="ftp://example.org/a.png"), "input.image_url"),
    (V25, _with_prompt(last_frame_url=LAST), "input.last_frame_url"),
    (V25, _with_prompt(image_url=IMAGE, last_frame_url=LAST, duration=10), "input.last_frame_url"),
    (V25, _with_prompt(cfg_scale=1.5), "input.cfg_scale"),
    (V25, _with_prompt(cfg_scale=-0.1), "input.cfg_scale"),
    (V25, _with_prompt(cfg_scale=True), "input.cfg_scale"),
    (V25, _with_prompt(cfg_scale=float("nan")), "input.cfg_scale"),
    (V25, _with_prompt(camera_control={"config": {"zoom": 11}}), "input.camera_control"),
    (V25, _with_prompt(camera_control={"config": {"roll": -10.5}}), "input.camera_control"),
    (V25, _with_prompt(camera_control={"config": {"dolly": 1}}), "input.camera_control"),
    (V25, _with_prompt(camera_control={"config": {"pan": True}}), "input.camera_control"),
    (V25, _with_prompt(camera_control={"config": {"pan": "1"}}), "input.camera_control"),
    (V25, _with_prompt(camera_control={"config": [1, 2]}), "input.camera_control"),
    (V25, _with_prompt(camera_control={"speed": 1}), "input.camera_control"),
    (V25, _with_prompt(camera_control="zoom"), "input.camera_control"),
    (V25, _with_prompt(seed=7), "input.seed"),
    (V25, _with_prompt(image_tail=IMAGE), "input.image_tail"),
    (V25, {"prompt": "x" * 2501}, "input.prompt"),
    (V25, _with_prompt(negative_prompt="n" * 2501), "input.negative_prompt"),
    (V25, _with_prompt(negative_prompt=["blur"]), "input.negative_prompt"),
    (V25, _with_prompt(camera_control={"type": 5}), "input.camera_control"),
    (V25, _with_prompt(external_task_id="mine"), "input.external_task_id"),
    # Trinetra Kling V3
    (V3, {"negative_prompt": "blur"}, "input.prompt"),
    (V3, _with_prompt(mode="i2v"), "input.image_url"),
    (V3, _with_prompt(mode="i2v", image_url="file:///etc/passwd"), "input.image_url"),
    (V3, _with_prompt(aspect_ratio="4:3"), "input.aspect_ratio"),
    (V3, _with_prompt(resolution="480p"), "input.resolution"),
    (V3, _with_prompt(negative_prompt="n" * 2501), "input.negative_prompt"),
    (V3, _with_prompt(cfg_scale=1.5), "input.cfg_scale"),
    (V3, _with_prompt(mode="std"), "input.mode"),
    (V3, _with_prompt(duration=11), "input.duration"),
    (V3, _with_prompt(duration=False), "input.duration"),
    (V3, _with_prompt(image_url=IMAGE, last_frame_url=LAST, duration=6), "input.last_frame_url"),
    (V3, _with_prompt(last_frame_url=LAST), "input.last_frame_url"),
    (V3, _with_prompt(camera_control={"config": {"tilt": -11}}), "input.camera_control"),
    # Trinetra Kling V3 Omni
    (OMNI, {"prompt": ""}, "input.prompt"),
    (OMNI, _with_prompt(duration=16), "input.duration"),
    (OMNI, _with_prompt(duration=0), "input.duration"),
    (OMNI, _with_prompt(last_frame_url=LAST), "input.last_frame_url"),
    (OMNI, _with_prompt(image_url="example.org/a.png"), "input.image_url"),
    (OMNI, _with_prompt(resolution="4k"), "input.resolution"),
    (OMNI, _with_prompt(negative_prompt="n" * 2501), "input.negative_prompt"),
    (OMNI, _with_prompt(cfg_scale=-1), "input.cfg_scale"),
    (OMNI, _with_prompt(camera_control={"config": {"zoom": -10.01}}), "input.camera_control"),
    (OMNI, _with_prompt(duration=0.5), "input.duration"),
    (OMNI, _with_prompt(mode="pro"), "input.mode"),
    (OMNI, _with_prompt(image_url=IMAGE, last_frame_url=LAST, duration=15), "input.last_frame_url"),
    (OMNI, _with_prompt(aspect_ratio="21:9"), "input.aspect_ratio"),
    # apiframe Kling 2.5 Turbo Pro
    (APIFRAME, {}, "input.prompt"),
    (APIFRAME, _with_prompt(image_url="//img.example/a.png"), "input.image_url"),
    (APIFRAME, _with_prompt(image_url=IMAGE, last_frame_url="last.png"), "input.last_frame_url"),
    (APIFRAME, _with_prompt(webhookUrl="https://example.org/hook"), "input.webhookUrl"),
    (APIFRAME, _with_prompt(duration=7), "input.duration"),
    (APIFRAME, _with_prompt(duration="5"), "input.duration"),
    (APIFRAME, _with_prompt(duration=True), "input.duration"),
    (APIFRAME, _with_prompt(aspect_ratio="4:3"), "input.aspect_ratio"),
    (APIFRAME, {"prompt": "x" * 4001}, "input.prompt"),
    (APIFRAME, _with_prompt(negative_prompt="n" * 2501), "input.negative_prompt"),
    (APIFRAME, _with_prompt(last_frame_url=LAST), "input.last_frame_url"),
    (APIFRAME, _with_prompt(cfg_scale=2), "input.cfg_scale"),
    (APIFRAME, _with_prompt(cfg_scale=False), "input.cfg_scale"),
    (APIFRAME, _with_prompt(camera_control=CAMERA), "input.camera_control"),
    (APIFRAME, _with_prompt(resolution="1080p"), "input.resolution"),
    (APIFRAME, _with_prompt(mode="pro"), "input.mode"),
    (APIFRAME, _with_prompt(klingParams={"duration": 5}), "input.klingParams"),
    # Segmind Kling 2.5 Turbo
    (SEGMIND, {"prompt": None}, "input.prompt"),
    (SEGMIND, _with_prompt(negative_prompt="n" * 2501), "input.negative_prompt"),
    (SEGMIND, _with_prompt(duration=7), "input.duration"),
    (SEGMIND, _with_prompt(duration="7"), "input.duration"),
    (SEGMIND, _with_prompt(duration="ten"), "input.duration"),
    (SEGMIND, _with_prompt(duration="1" * 5000), "input.duration"),
    (APIFRAME, _with_prompt(duration="10"), "input.duration"),
    (SEGMIND, _with_prompt(mode="std"), "input.mode"),
    (SEGMIND, _with_prompt(last_frame_url=LAST), "input.last_frame_url"),
    (SEGMIND, _with_prompt(aspect_ratio="4:3"), "input.aspect_ratio"),
    (SEGMIND, _with_prompt(cfg_scale=True), "input.cfg_scale"),
    (SEGMIND, _with_prompt(cfg_scale=1.01), "input.cfg_scale"),
    (SEGMIND, _with_prompt(image_url="not a url"), "input.image_url"),
    (SEGMIND, _with_prompt(tail_image_url=LAST), "input.tail_image_url"),
    (SEGMIND, _with_prompt(resolution="720p"), "input.resolution"),
    (SEGMIND, _with_prompt(camera_control=CAMERA), "input.camera_control"),
]


@pytest.mark.parametrize(
    ("model", "raw", "field"),
    INVALID,
    ids=[f"{case[0]}-{case[2]}-{i}" for i, case in enumerate(INVALID)],
)
def test_invalid_input_is_rejected_naming_the_field(
    model: str, raw: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationFailed) as raised:
        MODELS[model].validate(raw)

    error = raised.value
    assert error.status_code == 422
    assert set(error.details["fields"]) == {field}, error.details
    assert error.details["fields"][field], "the problem must be explained"
    assert field in error.message


def test_every_bad_field_is_named_at_once() -> None:
    with pytest.raises(ValidationFailed) as raised:
        MODELS[V25].validate(
            {"prompt": "p", "duration": 11, "aspect_ratio": "4:3", "seed": 1, "cfg_scale": True}
        )
    assert set(raised.value.details["fields"]) == {
        "input.duration",
        "input.aspect_ratio",
        "input.seed",
        "input.cfg_scale",
    }


@pytest.mark.parametrize("raw", [None, "a prompt", ["prompt"], 5])
@pytest.mark.parametrize("model", list(MODELS))
def test_input_that_is_not_an_object_is_rejected(model: str, raw: Any) -> None:
    with pytest.raises(ValidationFailed) as raised:
        MODELS[model].validate(raw)
    assert set(raised.value.details["fields"]) == {"input"}


def test_an_unknown_parameter_lists_the_accepted_ones() -> None:
    with pytest.raises(ValidationFailed) as raised:
        MODELS[SEGMIND].validate(_with_prompt(fps=24))
    problem = raised.value.details["fields"]["input.fps"]
    for name in ("prompt", "duration", "aspect_ratio", "image_url", "last_frame_url"):
        assert name in problem


@pytest.mark.parametrize(
    ("model", "raw", "amount", "unit"),
    [
        (V3, _with_prompt(resolution="1080p", duration=10), 300, "credits"),
        (V3, _with_prompt(), 95, "credits"),
        (V25, _with_prompt(), 50, "credits"),
        (V25, _with_prompt(resolution="1080p", duration=10), 150, "credits"),
        (OMNI, _with_prompt(resolution="1080p", duration=15), 690, "credits"),
        (OMNI, _with_prompt(duration=10), 290, "credits"),
        (APIFRAME, _with_prompt(duration=10), 7, "credits"),
        (APIFRAME, _with_prompt(), 4, "credits"),
        (SEGMIND, _with_prompt(duration=5), 0.44, "usd"),
        (SEGMIND, _with_prompt(), 0.88, "usd"),
    ],
)
def test_price_estimates_follow_the_providers_tables(
    model: str, raw: dict[str, Any], amount: float, unit: str
) -> None:
    spec = MODELS[model]
    assert spec.price.estimate(spec.validate(raw)) == pytest.approx(amount)
    assert spec.price.unit == unit


SEED_PRICES: dict[str, dict[str, float]] = {
    V25: {"720p": 10, "1080p": 15},
    V3: {"720p": 19, "1080p": 30},
    OMNI: {"720p": 29, "1080p": 46},
    APIFRAME: {"5": 4, "10": 7},
    SEGMIND: {"5": 0.44, "10": 0.88},
}


async def test_the_models_endpoint_serves_all_five_with_parameters_and_prices(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/v1/models")

    assert response.status_code == 200, response.text
    models = {entry["id"]: entry for entry in response.json()["data"]}
    assert set(models) == set(SEED_PRICES)
    for model_id, entry in models.items():
        assert entry["provider"] == model_id.split("/")[0]
        assert entry["pricing"]["table"] == SEED_PRICES[model_id]
        assert entry["pricing"]["unit"] == ("usd" if model_id == SEGMIND else "credits")
        parameters = entry["parameters"]
        assert parameters["prompt"]["required"] is True
        assert set(parameters) == {p.name for p in MODELS[model_id].params}
        # One spec drives both: every default the catalog shows is the one validation applies.
        applied = MODELS[model_id].validate({"prompt": "p"})
        for name, described in parameters.items():
            if "default" in described:
                assert applied[name] == described["default"], (model_id, name)
            elif name != "prompt" and not (model_id == V3 and name == "mode"):
                assert name not in applied, (model_id, name)

    assert models[V25]["parameters"]["aspect_ratio"]["default"] == "9:16"
    assert models[V25]["parameters"]["mode"]["enum"] == ["std", "pro"]
    assert models[V3]["parameters"]["mode"]["enum"] == ["t2v", "i2v"]
    assert models[V3]["parameters"]["duration"]["maximum"] == 10
    assert models[OMNI]["parameters"]["duration"]["maximum"] == 15
    assert "mode" not in models[OMNI]["parameters"]
    assert models[APIFRAME]["parameters"]["duration"]["enum"] == [5, 10]
    assert models[APIFRAME]["parameters"]["prompt"]["max_length"] == 4000
    assert models[SEGMIND]["parameters"]["duration"]["default"] == 10
    assert models[SEGMIND]["parameters"]["mode"]["enum"] == ["pro"]
    assert models[SEGMIND]["parameters"]["cfg_scale"]["default"] == 0.7


async def test_the_jobs_api_answers_a_bad_input_with_a_422_naming_the_field(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/v1/jobs",
        json={"model": APIFRAME, "input": {"prompt": "p", "duration": 7, "camera_control": {}}},
    )

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_failed"
    assert set(error["details"]["fields"]) == {"input.duration", "input.camera_control"}
    listed = await client.get("/v1/jobs")
    assert listed.json()["data"] == [], "a rejected job must not be stored"


# --- every parameter and every rule of every model is exercised by the tables above -------------


def _rules_fired(model: str, raw: dict[str, Any]) -> set[str]:
    """The descriptions of the cross-field rules ``raw`` breaks once defaults are applied."""
    spec = MODELS[model]
    data = {p.name: p.default for p in spec.params if p.default is not None}
    data.update({k: v for k, v in raw.items() if v is not None})
    if spec.defaults_from:
        data = {**spec.defaults_from(data), **data}
    return {rule.description for rule in spec.rules if rule(data)}


@pytest.mark.parametrize("model", list(MODELS))
def test_every_rule_has_an_invalid_case_naming_its_field(model: str) -> None:
    for rule in MODELS[model].rules:
        cases = [
            field
            for case_model, raw, field in INVALID
            if case_model == model and rule.description in _rules_fired(model, raw)
        ]
        assert cases, f"{model}: no invalid case breaks the rule {rule.description!r}"


@pytest.mark.parametrize("model", list(MODELS))
def test_every_constrained_parameter_has_an_invalid_case(model: str) -> None:
    named = {field for case_model, _, field in INVALID if case_model == model}
    for param in MODELS[model].params:
        assert f"input.{param.name}" in named, f"{model}: no invalid case for {param.name}"


@pytest.mark.parametrize("model", list(MODELS))
def test_every_parameter_has_a_valid_case(model: str) -> None:
    given = {name for case_model, raw, _, _ in VALID if case_model == model for name in raw}
    for param in MODELS[model].params:
        assert param.name in given, f"{model}: no valid case passes {param.name}"


@pytest.mark.parametrize(
    ("model", "name"),
    [
        (V25, "external_task_id"),
        (V3, "callback_url"),
        (OMNI, "external_task_id"),
        (APIFRAME, "webhookUrl"),
        (APIFRAME, "webhookEvents"),
    ],
)
def test_a_parameter_reelhook_sets_itself_is_refused_saying_so(model: str, name: str) -> None:
    with pytest.raises(ValidationFailed) as raised:
        MODELS[model].validate(_with_prompt(**{name: "x"}))
    problem = raised.value.details["fields"][f"input.{name}"]
    assert problem.startswith("is set by reelhook"), problem


def test_the_catalog_states_each_models_cross_field_rules() -> None:
    assert MODELS[V3].describe()["rules"] == [
        "last_frame_url requires image_url",
        "last_frame_url is for 5 s clips only",
        "mode i2v requires image_url",
    ]
    assert MODELS[APIFRAME].describe()["rules"] == ["last_frame_url requires image_url"]
    assert MODELS[SEGMIND].describe()["rules"] == ["last_frame_url requires image_url"]


@pytest.mark.parametrize(("given", "stored"), [("10", 10), ("5", 5), (" 5 ", 5), (10, 10)])
def test_segmind_duration_accepts_the_string_its_own_example_sends(given: Any, stored: int) -> None:
    """Segmind's page example sends ``"duration": "10"`` while its table says integer: both are
    accepted, and the job keeps (and sends) the integer."""
    clean = MODELS[SEGMIND].validate(_with_prompt(duration=given))
    assert clean["duration"] == stored and type(clean["duration"]) is int
    assert MODELS[SEGMIND].price.estimate(clean) == {5: 0.44, 10: 0.88}[stored]


@pytest.mark.parametrize(
    ("model", "raw", "estimated", "assumed"),
    [
        (V25, _with_prompt(), 50, {"resolution": "720p"}),
        (V25, _with_prompt(mode="pro"), 75, {"resolution": "1080p"}),
        (V25, _with_prompt(mode="pro", resolution="720p"), 50, {}),
        (V3, _with_prompt(duration=10), 190, {"resolution": "720p"}),
        (OMNI, _with_prompt(resolution="1080p"), 230, {}),
        (APIFRAME, _with_prompt(), 4, {}),
    ],
)
def test_the_estimate_states_the_resolution_it_assumed(
    model: str, raw: dict[str, Any], estimated: float, assumed: dict[str, str]
) -> None:
    spec = MODELS[model]
    clean = spec.validate(raw)
    assert spec.price.estimate(clean) == estimated
    assert spec.price.assumes(clean) == assumed
    assert "resolution" not in clean or "resolution" in raw
