"""Which policy a request runs under, through the chat processor: first match wins, whatever
phase decides. The route is known at request headers, the model only in the body, so a policy
bypasses at headers only when every policy the request may still fall under says so."""

from __future__ import annotations

from typing import Any

from extproc.config.policies import Policy
from extproc.dataplane.processors import ChatCompletionsProcessor
from extproc.dataplane.shared import Shared
from tests.unit.dataplane.test_processors import CHAT, completion, headers, make_shared, run_spawned


async def ask(
    shared: Shared,
    pending: list[Any],
    model: str,
    extra: list[tuple[str, str]] | None = None,
    route: str = "chat",
) -> ChatCompletionsProcessor:
    """One request of ``model`` on ``route`` (answered and stored on a miss)."""
    p = ChatCompletionsProcessor(shared, [("x-semantic-cache-route", route)])
    p.on_request_headers(headers(CHAT + (extra or [])), False)
    if not p.decision.reason:  # not bypassed at headers
        body = f'{{"model": "{model}", "messages": [{{"role": "user", "content": "v:1,0"}}]}}'
        await p.on_request_body(body.encode(), True)
    if p.decision.outcome == "miss":
        p.on_response_headers(headers([(":status", "200"), ("content-type", "application/json")]), False)
        p.on_response_body(completion("answer"), True)
    await run_spawned(pending)
    p.on_stream_closed()
    return p


def policy(name: str, route: str | None = None, model: str | None = None, **changes: Any) -> Policy:
    return Policy(name, model, route, tuple(sorted(changes.items())))


async def stored_ttl(shared: Shared, p: ChatCompletionsProcessor) -> float:
    assert p._query is not None
    entry = await shared.cache.entry(p._query.exact_key)
    assert entry is not None
    return round(entry.expires_at - entry.created_at)


async def test_a_model_policy_before_a_route_policy_that_turns_caching_off() -> None:
    shared, _, pending = make_shared(
        policies=(policy("gpt4o", model="gpt-4o", ttl_seconds=60), policy("off", route="chat", enabled=False))
    )
    served = await ask(shared, pending, "gpt-4o")
    assert (served.decision.outcome, served.decision.policy) == ("miss", "gpt4o")
    assert await stored_ttl(shared, served) == 60
    other = await ask(shared, pending, "llama")
    assert (other.decision.outcome, other.decision.reason, other.decision.policy) == (
        "bypass",
        "disabled",
        "off",
    )


async def test_a_model_policy_loosens_the_scope_a_later_policy_requires() -> None:
    shared, _, pending = make_shared(
        scope_mode="header", policies=(policy("public", model="public-*", scope_mode="global"),)
    )
    public = await ask(shared, pending, "public-llm")  # no tenant header: scoped globally
    assert (public.decision.outcome, public.decision.policy) == ("miss", "public")
    private = await ask(shared, pending, "private-llm")
    assert (private.decision.outcome, private.decision.reason) == ("bypass", "no_scope")
    tenant = await ask(shared, pending, "private-llm", [("x-tenant-id", "a")])
    assert tenant.decision.outcome == "miss"


async def test_the_ttl_a_client_asks_for_is_capped_by_its_models_policy() -> None:
    shared, _, pending = make_shared(
        max_ttl_seconds=0,  # the defaults ignore x-semantic-cache-ttl
        policies=(
            policy("short", model="short", max_ttl_seconds=60),
            policy("long", model="long", max_ttl_seconds=7200),
        ),
    )
    ask_day = [("x-semantic-cache-ttl", "86400")]
    assert await stored_ttl(shared, await ask(shared, pending, "short", ask_day)) == 60
    assert (
        await stored_ttl(shared, await ask(shared, pending, "long", [("x-semantic-cache-ttl", "3600")]))
        == 3600
    )
    assert (
        await stored_ttl(shared, await ask(shared, pending, "other", ask_day)) == shared.settings.ttl_seconds
    )


async def test_a_bypass_at_headers_names_its_policy_when_only_one_applies() -> None:
    shared, decisions, pending = make_shared(policies=(policy("classify", route="chat", enabled=False),))
    for _ in range(3):
        p = await ask(shared, pending, "m")
    assert (p.decision.reason, p.decision.policy) == ("disabled", "classify")
    assert [d.policy for d in decisions] == ["classify"] * 3


async def test_the_pass_through_switch_stops_what_policies_enable() -> None:
    """The admin API's switch is for incidents and restores: it stops every lookup and store,
    a policy's enabled: true included (the file's enabled: false is a default policies override)."""
    from extproc.admin.live_config import set_enabled, set_switch

    shared, _, pending = make_shared(enabled=False, policies=(policy("on", route="chat", enabled=True),))
    assert (await ask(shared, pending, "m")).decision.outcome == "miss"  # the policy enables it
    assert set_switch(shared, False, "test") and not set_switch(shared, False, "test")
    off = await ask(shared, pending, "m")
    assert (off.decision.outcome, off.decision.reason) == ("bypass", "disabled")
    set_enabled(shared, False, "a file change")  # the file's key leaves the switch as it is
    assert shared.paused
    assert set_switch(shared, True, "test") and shared.settings.enabled
    assert (await ask(shared, pending, "m")).decision.outcome == "hit"


async def test_a_route_added_towards_another_cluster_shares_no_answer() -> None:
    shared, _, pending = make_shared()
    premium = await ask(shared, pending, "m", route="premium")
    assert premium.decision.outcome == "miss"
    chat = await ask(shared, pending, "m")  # the same body on the shipped route
    assert chat.decision.outcome == "miss"
    assert chat.decision.partition != premium.decision.partition
    again = await ask(shared, pending, "m", route="premium")
    assert (again.decision.outcome, again.decision.match) == ("hit", "exact")
