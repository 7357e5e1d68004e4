"""What a reload changes, what it refuses, and when an old upstream's clients close."""

from __future__ import annotations

import asyncio

import pytest

from gateway.config import Config, load_config
from gateway.errors import ConfigError
from gateway.reloadable import Reloadable, check_reloadable, restart_keys
from tests.test_config import BASE_ENV


def config(**env: str) -> Config:
    return load_config(
        None, {**BASE_ENV, **{f"GATEWAY_{k.upper()}": v for k, v in env.items()}}
    )


def not_own(name: str) -> bool:
    return False


@pytest.mark.parametrize(
    ("change", "keys"),
    [
        ({"access_users": "bob"}, []),
        ({"upstream_url": "http://127.0.0.1:9"}, []),
        ({"upstream_max_requests_per_user": "3"}, ["upstream.max_requests_per_user"]),
        ({"server_listen": "127.0.0.1:9"}, ["server.listen"]),
        ({"session_secret": "n" * 40}, ["session.secret"]),
        ({"session_cookie_name": "other"}, ["session.cookie_name"]),
        ({"reddit_client_secret": "another-secret"}, ["reddit.client_secret"]),
        (
            {"log_level": "debug", "server_workers": "3"},
            ["server.workers", "log.level"],
        ),
    ],
)
def test_restart_keys_name_what_a_reload_cannot_change(
    change: dict[str, str], keys: list[str]
) -> None:
    assert restart_keys(config(), config(**change)) == keys


def test_restart_keys_never_show_values() -> None:
    changed = restart_keys(config(), config(session_secret="n" * 40))

    assert "n" * 40 not in repr(changed)


def test_an_assertion_audience_that_follows_the_upstream_needs_a_restart() -> None:
    running = config(assertion_enabled="true")

    moved = config(assertion_enabled="true", upstream_url="http://127.0.0.1:9")

    assert restart_keys(running, moved) == ["assertion.audience"]


def test_listing_rules_need_the_scope_the_running_gateway_asks_for() -> None:
    with pytest.raises(ConfigError) as refused:
        check_reloadable(config(), config(access_moderators_of="demo"))
    assert refused.value.key == "access.moderators_of"

    running = config(access_subscribers_of="other")
    check_reloadable(running, config(access_moderators_of="demo"))


async def test_reload_swaps_rules_and_keeps_an_unchanged_upstream() -> None:
    reloadable = Reloadable(config(access_users="alice"), lambda: 0.0, not_own)
    policy, upstream = reloadable.policy, reloadable.upstream

    reloadable.reload(config(access_users="bob"))

    assert reloadable.policy is not policy
    assert reloadable.upstream is upstream
    await reloadable.close()


async def test_a_replaced_upstream_closes_when_its_last_request_ends() -> None:
    reloadable = Reloadable(config(), lambda: 0.0, not_own)
    old = reloadable.upstream

    with old:
        reloadable.reload(config(upstream_url="http://127.0.0.1:9"))
        assert reloadable.upstream is not old
        assert reloadable.upstream.config.url.port == 9
        assert not old.probe.closed
    async with asyncio.timeout(5):
        while not old.closed:  # noqa: ASYNC110 (a plain flag: poll it)
            await asyncio.sleep(0)

    assert old.probe.closed and old.closed
    assert not reloadable.upstream.probe.closed
    await reloadable.close()
    assert reloadable.upstream.probe.closed


async def test_a_refused_reload_changes_nothing() -> None:
    reloadable = Reloadable(config(), lambda: 0.0, not_own)
    policy, upstream = reloadable.policy, reloadable.upstream

    with pytest.raises(ConfigError):
        reloadable.reload(config(access_moderators_of="demo"))

    assert (reloadable.policy, reloadable.upstream) == (policy, upstream)
    await reloadable.close()
