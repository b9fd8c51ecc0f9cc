"""The hostile soak's pure parts (testbed/graphcred_testbed/hostile.py): the figures it prints, the schedule it
judges victims' refreshes against, and attack payloads that must be what the review describes."""

from __future__ import annotations

import os
import re

import pytest
from pydantic import ValidationError

from graphcred.api.model import DURATION_PATTERN, GraphAppCredentialSpec
from graphcred_testbed.hostile import (
    forged_error,
    huge_duration,
    lateness_line,
    long_name,
    percentile,
    scheduled_refresh,
    template_bomb,
    vm_peak_rss,
)

SPEC = {"tenantId": "72f988bf-86f1-41af-91ab-2d7cd011db47", "clientId": "1b4f816e-5eaf-48b9-8613-7923830595ad",
        "credential": {"clientSecret": {"name": "app"}}}


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) == 0.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0, "unsorted input"


def test_lateness_line_names_the_overdue_tokens() -> None:
    line = lateness_line([0.0, 0.5, 12.0], [40.0, 95.2])
    assert line.startswith("3 refreshes, p50 0.5 s, p99 12.0 s, max 12.0 s")
    assert "2 tokens still not refreshed at the end, overdue by up to 95 s" in line
    assert lateness_line([], []) == "0 refreshes, p50 0.0 s, p99 0.0 s, max 0.0 s"


def test_schedule_is_the_status_refresh_time_when_the_status_describes_the_token() -> None:
    # a 60 s token issued at 1000: the status names its expiry (to the second) and a jittered refreshAt
    assert scheduled_refresh(1000, 1060, None, status_refresh_at=1027.5, status_expires_on=1060.4) == 1027.5
    # the status still describes the previous token (another expiry): the documented rule, without jitter
    assert scheduled_refresh(1000, 1060, None, status_refresh_at=990.0, status_expires_on=1030.0) == 1030.0


def test_schedule_without_status_follows_the_documented_rule() -> None:
    assert scheduled_refresh(1000, 1120, None) == 1060.0, "half the lifetime"
    assert scheduled_refresh(1000, 1120, 30.0) == 1090.0, "refreshBeforeExpiry ahead of expiry"
    assert scheduled_refresh(1000, 1120, 500.0) == 1060.0, "longer than the lifetime: half-life"
    assert scheduled_refresh(1000, 1060, 55.0) == 1006.0, "never sooner than a tenth of the lifetime"
    assert scheduled_refresh(1000, 1020, 19.0) == 1005.0, "nor sooner than 5 s"


@pytest.mark.parametrize("variant", range(6))
def test_attack_specs_are_refused_by_the_model(variant: int) -> None:
    """The model (and the CRD, which has the same rules) once admitted each of these; since 26f39ee
    the model refuses them (the CRD too: the soak's attacker counts those 422s as refused at admission)."""
    with pytest.raises(ValidationError):
        GraphAppCredentialSpec.model_validate({**SPEC, "secretTemplate": {"data": template_bomb(variant)}})
    value = huge_duration(variant)
    assert re.fullmatch(DURATION_PATTERN, value) and len(value) <= 64
    with pytest.raises(ValidationError):
        GraphAppCredentialSpec.model_validate({**SPEC, "refreshBeforeExpiry": value})


def test_template_bombs_stay_within_what_the_harness_can_afford() -> None:
    """At most 26 json filters in a row: about 134 MB of output each (the review's measurement), never 2**60."""
    for variant in range(12):
        for template in template_bomb(variant).values():
            assert 22 <= template.count("| json") <= 26


@pytest.mark.parametrize("variant", range(12))
def test_long_names_are_valid_object_names_with_no_valid_token_secret_name(variant: int) -> None:
    name = long_name(variant)
    assert 248 <= len(name) <= 253
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name)
    assert len(f"{name}-token") > 253
    assert len({long_name(v) for v in range(12)}) == 12, "each try a new object"


def test_forged_errors_carry_line_breaks_or_terminal_escapes() -> None:
    texts = [forged_error(v) for v in range(3)]
    assert "\n2031-01-01 00:00:00,000 ERROR" in texts[0]
    assert "\x1b[2J" in texts[1]
    assert "\r\n" in texts[2] and "\x1b]0;" in texts[2]


def test_peak_rss_reads_this_process() -> None:
    found = vm_peak_rss(os.getpid())
    assert found is not None
    peak, now = found
    assert peak >= now > 1_000_000
    assert vm_peak_rss(2**22 + 12345) is None, "a pid that does not exist"
