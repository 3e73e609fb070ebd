"""Guards (deployments/workflows/guards.py): each limit fires or not, each action's verdict, and how a request
gives one (the API's and the bulk job's validation)."""

import pytest

from deployments.checkpoints.loader import resolve_model
from deployments.errors import InvalidInputError
from deployments.request.binding import parse
from deployments.settings.guard import Guard
from deployments.settings.limits import Limits
from deployments.workflows.guards import GuardFailedError, judge, retry_seed
from tests.helpers import image_bytes, random_image

REPORT = {"changed_fraction": 0.8, "unchanged_ssim": 0.95, "unchanged_psnr_db": 31.0}


@pytest.mark.parametrize(
    "limits, crossed",
    [
        ({"max_changed_fraction": 0.5}, ["changed_fraction 0.8 is above max_changed_fraction 0.5"]),
        ({"max_changed_fraction": 0.9}, []),
        ({"min_changed_fraction": 0.9}, ["changed_fraction 0.8 is below min_changed_fraction 0.9"]),
        ({"min_unchanged_ssim": 0.99, "min_unchanged_psnr_db": 30}, ["unchanged_ssim 0.95 is below min_unchanged_ssim 0.99"]),
        ({"min_unchanged_psnr_db": 35}, ["unchanged_psnr_db 31 is below min_unchanged_psnr_db 35"]),
    ],
)
def test_each_limit_fires_only_past_its_value(limits, crossed):
    assert Guard(**limits).crossed(REPORT) == crossed


def test_an_empty_or_identical_kept_region_crosses_no_least():
    guard = Guard(min_unchanged_ssim=0.9, min_unchanged_psnr_db=40)
    assert guard.crossed({"changed_fraction": 1.0, "unchanged_ssim": None, "unchanged_psnr_db": None}) == []


@pytest.mark.parametrize("action", ["flag", "retry", "fail"])
def test_a_guard_that_does_not_fire_passes_whatever_its_action(action):
    verdict = judge(Guard(max_changed_fraction=0.9, action=action), REPORT)
    assert verdict.as_dict() == {"verdict": "passed", "crossed": [], "retried_from_seed": None}


def test_flag_answers_with_the_limits_crossed():
    verdict = judge(Guard(max_changed_fraction=0.5), REPORT)
    assert verdict.verdict == "flagged" and verdict.crossed == ("changed_fraction 0.8 is above max_changed_fraction 0.5",)


def test_retry_asks_for_the_image_again_once_then_says_how_the_retry_went():
    guard = Guard(max_changed_fraction=0.5, action="retry")
    assert judge(guard, REPORT) is None  # make it again
    assert judge(guard, {**REPORT, "changed_fraction": 0.2}, first_seed=7).as_dict() == {
        "verdict": "retried", "crossed": [], "retried_from_seed": 7,
    }
    assert judge(guard, REPORT, first_seed=7).verdict == "flagged"  # never a second retry
    assert retry_seed(7, 1) == 8 and retry_seed(7, 3) == 10 and retry_seed(2**63 - 1, 1) == 0


def test_fail_raises_a_422_naming_the_guard():
    with pytest.raises(GuardFailedError) as failed:
        judge(Guard(max_changed_fraction=0.5, action="fail"), REPORT)
    assert failed.value.status == 422 and failed.value.param == "guard"
    assert failed.value.message == "guard: the edited image crossed its limits (changed_fraction 0.8 is above max_changed_fraction 0.5)"


@pytest.fixture(scope="module")
def request_model(tiny_checkpoints):
    return resolve_model(tiny_checkpoints["edit-plus"]).request_model


IMAGE = image_bytes(random_image(32, 32))


@pytest.mark.parametrize(
    "given, message",
    [
        ("{}", "guard: sets no limit; give one of max_changed_fraction, min_changed_fraction"),
        ('{"max_changed_fraction": 2}', "guard: guard.max_changed_fraction: input should be less than or equal to 1"),
        ('{"max_changed_fraction": 0.5, "action": "panic"}', "guard: guard.action: input should be 'flag', 'retry' or 'fail'"),
        ("{max", "guard: must be JSON such as"),
    ],
)
def test_a_bad_guard_is_refused_naming_the_field(request_model, given, message):
    with pytest.raises(InvalidInputError) as refused:
        parse(request_model(), {"image": [IMAGE], "prompt": "p", "guard": given})
    assert refused.value.message.startswith(message)


def test_the_deployment_s_guard_applies_unless_the_request_gives_its_own_or_off(request_model):
    default = Guard(max_changed_fraction=0.4)
    model = request_model(Limits(guard={"default": default}))
    assert parse(model, {"image": [IMAGE], "prompt": "p"}).guard == default
    assert parse(model, {"image": [IMAGE], "prompt": "p", "guard": "off"}).guard is None
    own = parse(model, {"image": [IMAGE], "prompt": "p", "guard": '{"min_changed_fraction": 0.1, "action": "fail"}'}).guard
    assert own == Guard(min_changed_fraction=0.1, action="fail")
    assert parse(request_model(), {"image": [IMAGE], "prompt": "p"}).guard is None  # none unless configured
