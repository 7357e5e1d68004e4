"""What the app learns about the user: the signed assertion and the opt-in token."""

from __future__ import annotations

import aiohttp
import jwt

from tests.conftest import StackFactory


async def test_signed_assertion_reaches_the_app_and_verifies_with_the_jwks(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(assertion_enabled="true")
    async with stack.browser() as browser:
        await stack.login(browser, "Alice_42")
        async with browser.get(
            stack.url / "x", headers={"X-Reddit-Assertion": "forged.by.client"}
        ) as response:
            assert response.status == 200
        async with browser.get(stack.url / "oauth2/jwks.json") as keys:
            jwks = jwt.PyJWKSet.from_dict(await keys.json())

    tokens = stack.upstream.last.all("X-Reddit-Assertion")
    assert len(tokens) == 1
    header = jwt.get_unverified_header(tokens[0])
    key = next(k for k in jwks.keys if k.key_id == header["kid"])
    claims = jwt.decode(
        tokens[0],
        key,
        algorithms=["EdDSA", "ES256"],
        issuer=str(stack.config.server.public_url),
        audience=str(stack.config.upstream.url),
        # The test clock is not the wall clock.
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    assert claims["name"] == "Alice_42"
    assert claims["sub"].startswith("t2_")


async def test_no_assertion_and_no_jwks_unless_enabled(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack()
    async with stack.browser() as browser:
        await stack.login(browser, "alice")
        async with browser.get(stack.url / "x") as response:
            assert response.status == 200
        async with browser.get(stack.url / "oauth2/jwks.json") as keys:
            assert keys.status == 404

    assert stack.upstream.last.all("X-Reddit-Assertion") == []


async def test_access_token_reaches_the_app_only_when_opted_in(
    make_stack: StackFactory,
) -> None:
    plain = await make_stack()
    opted = await make_stack(upstream_pass_access_token="true")
    for stack in (plain, opted):
        async with stack.browser() as browser:
            await stack.login(browser, "alice")
            async with browser.get(
                stack.url / "x", headers={"X-Reddit-Access-Token": "spoofed"}
            ) as response:
                assert response.status == 200

    assert plain.upstream.last.all("X-Reddit-Access-Token") == []
    [token] = opted.upstream.last.all("X-Reddit-Access-Token")
    assert token != "spoofed"
    async with aiohttp.ClientSession() as client:
        async with client.get(
            opted.config.reddit.api_url / "api/v1/me",
            headers={
                "Authorization": f"bearer {token}",
                "User-Agent": "test:reddit-gateway-tests:v1 (by /u/tests)",
            },
        ) as me:
            assert (await me.json())["name"] == "alice"
