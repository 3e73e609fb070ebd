"""Requests built to break the binding: deeply nested or huge JSON in every JSON-text field, booleans
where numbers are meant, a trailing newline, a TaylorSeer that predicts from nothing, chain links that
set what a link can't or that together cost more than the work limit. Each is a 400 naming its field;
and, property-tested, any values at all give a validated request or an InvalidInputError — never
another exception."""

import json
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deployments.errors import InvalidInputError
from deployments.request.binding import parse, request_model
from deployments.request.registry import DECLARATIONS
from deployments.settings.json_text import ADAPTER_LIST_CHARS, CHAIN_CHARS, SMALL_OBJECT_CHARS
from deployments.settings.limits import Limits
from deployments.workflows.chains import chain_links

QWEN = request_model(DECLARATIONS["QwenImageEditPipeline"])
IMAGE = [b"not decoded here"]
JSON_FIELDS = {"cache": SMALL_OBJECT_CHARS, "guard": SMALL_OBJECT_CHARS, "lora": ADAPTER_LIST_CHARS, "chain": CHAIN_CHARS}


def refusal(model=QWEN, **values) -> InvalidInputError:
    with pytest.raises(InvalidInputError) as info:
        links(model, **values)
    assert info.value.status == 400
    return info.value


def links(model=QWEN, **values):
    values = {"image": IMAGE, "prompt": "make the sky pink", **values}
    return chain_links(model, parse(model, values), values)


@pytest.mark.parametrize("field", JSON_FIELDS)
@pytest.mark.parametrize("text", ["[" * 1500, "[" * 5000, '{"a":' * 3000, "[" * 200 + "]" * 200])
def test_deeply_nested_json_is_a_400_naming_the_field(field, text):
    """json.loads raised RecursionError here (a 500 online, a dead bulk job)."""
    error = refusal(**{field: text})
    assert error.param == field, error.message


@pytest.mark.parametrize("field, most", JSON_FIELDS.items())
def test_each_json_field_has_a_size_bound_checked_before_parsing(field, most):
    error = refusal(**{field: "[" + "0," * most + "0]"})
    assert error.param == field and f"at most {most} characters" in error.message, error.message
    assert len(error.message) < 600  # the refused value is shown as an excerpt, not whole


@pytest.mark.parametrize("field", JSON_FIELDS)
def test_json_that_is_not_utf8_text_is_a_400(field):
    assert refusal(**{field: '"\ud800"'}).param == field


@pytest.mark.parametrize("values, param", [
    ({"placement": "center\n", "size": "512x512"}, "placement"),  # once a 500: `$` accepts a trailing newline
    ({"placement": "3,4\n", "size": "512x512"}, "placement"),
    ({"size": "512x512\n"}, "size"),
    ({"n": True}, "n"),
    ({"seed": True}, "seed"),
    ({"true_cfg_scale": True}, "true_cfg_scale"),
    ({"num_inference_steps": False}, "num_inference_steps"),
    ({"cache": '{"method": "first_block_cache", "threshold": true}'}, "cache"),
    ({"cache": '{"method": "taylorseer", "cache_interval": true}'}, "cache"),
    ({"guard": '{"max_changed_fraction": true}'}, "guard"),
    ({"chain": '[{"prompt": "x", "seed": true}]'}, "chain"),
    ({"chain": '[{"prompt": "x", "num_inference_steps": true}]'}, "chain"),
])
def test_booleans_are_no_numbers_and_whole_values_are_matched(values, param):
    error = refusal(**values)
    assert error.param == param, error.message


@pytest.mark.parametrize("warm_up, order", [(0, 0), (0, 1), (1, 1), (2, 2), (4, 4)])
def test_a_taylorseer_that_would_predict_from_too_few_outputs_is_refused(warm_up, order):
    """disable_cache_before_step 0 once crashed the Denoiser's step for every batch-mate."""
    cache = {"method": "taylorseer", "disable_cache_before_step": warm_up, "max_order": order, "cache_interval": 2}
    error = refusal(cache=json.dumps(cache))
    assert error.param == "cache" and f"at least max_order + 1 = {order + 1}" in error.message, error.message
    assert parse(QWEN, {"image": IMAGE, "prompt": "x", "cache": json.dumps({**cache, "disable_cache_before_step": order + 1})}).cache


@pytest.mark.parametrize("link", [{"model": "style"}, {"stream": True}, {"timeout": 5}, {"partial_images": 1}])
def test_a_chain_link_cannot_set_the_calls_options(tiny_checkpoints, link):
    """A link's `model` was accepted online and silently ignored (the form's fields are the call's too)."""
    from deployments.checkpoints.loader import resolve_model
    from serve.schema import ServedModel

    form = ServedModel("edit", resolve_model(tiny_checkpoints["edit"])).form_model(Limits(), 300)
    error = refusal(form, chain=json.dumps([{"prompt": "add snow", **link}]))
    assert error.param == "chain" and f"{next(iter(link))!r} can't be set in a link" in error.message, error.message
    assert "is not a field of this API" in refusal(chain=json.dumps([{"prompt": "x", **link}])).message  # no such field in bulk rows


def test_the_work_limit_holds_for_the_whole_request():
    """4 links x a guard's retry each once made 8x max_work."""
    limits = Limits(max_work=4 * 10 * 512 * 512)
    bound = request_model(DECLARATIONS["QwenImageEditPipeline"], limits)
    one = {"n": 4, "num_inference_steps": 10, "size": "512x512"}
    assert len(links(bound, **one)) == 1
    retrying = '{"max_changed_fraction": 0.5, "action": "retry"}'
    assert refusal(bound, **one, guard=retrying).param == "n"  # its retry may make every image twice
    error = refusal(bound, **one, chain='["make it night"]')
    assert error.param == "chain" and "over all 2 links" in error.message, error.message
    assert len(links(bound, **{**one, "n": 2}, chain='["make it night"]')) == 2


FIELDS = [*QWEN.model_fields, "stream", "model", "unknown"]
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(string.ascii_lowercase, max_size=8), inner, max_size=4),
    max_leaves=12,
)
VALUES = JSONISH | JSONISH.map(json.dumps) | st.binary(max_size=16) | st.sampled_from(["off", "auto", "", "center", "[", "{}", "1e999"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=6))
def test_any_values_give_a_request_or_an_error_naming_a_field(values):
    values = {"image": IMAGE, "prompt": "x", **values}
    try:
        chain_links(QWEN, parse(QWEN, values), values)
    except InvalidInputError as e:
        assert e.param and e.message.startswith(f"{e.param}: ") and e.status == 400
