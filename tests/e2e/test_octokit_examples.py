"""Deliver every GitHub webhook example of @octokit/webhooks-examples through hookd.

One application gets one event type per GitHub event, four endpoints that split
the event types between them by event-type filter, and one catch-all endpoint.
Each example is sent with the Svix SDK; every delivery must verify with the
Standard Webhooks reference verifier and carry the payload byte for byte.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic_core
import pytest
from standardwebhooks import Webhook, WebhookVerificationError
from svix.api import (
    ApplicationIn,
    EndpointIn,
    EventTypeIn,
    MessageGetOptions,
    MessageIn,
    Svix,
)

from support import E2E_DIR, HookdPool, Receiver, ReceiverPool, RecordedRequest

EXAMPLES_VERSION = "7.6.1"
# Counted in api.github.com/index.json of @octokit/webhooks-examples 7.6.1.
EXPECTED_EXAMPLE_COUNT = 329
EXPECTED_EVENT_TYPE_COUNT = 58

FILTERED_RECEIVER_COUNT = 4
DELIVERY_TIMEOUT_SECONDS = 60.0
STATS_TIMEOUT_SECONDS = 15.0


def examples_index_path() -> Path:
    cache_dir = Path(os.environ.get("HOOKD_E2E_CACHE", E2E_DIR / ".cache"))
    return cache_dir / f"octokit-webhooks-examples-{EXAMPLES_VERSION}" / "api.github.com" / "index.json"


def load_github_events() -> list[dict[str, Any]]:
    """Load the list of GitHub events, each with its `name` and `examples`."""
    path = examples_index_path()
    if not path.is_file():
        pytest.fail(
            f"{path} is missing: run `bash tests/e2e/fetch_fixtures.sh` "
            "(or set HOOKD_E2E_CACHE to the cache folder it filled)"
        )
    return json.loads(path.read_bytes())


def event_type_name(github_event: str) -> str:
    return f"github.{github_event}"


def sdk_request_body(message_in: MessageIn) -> bytes:
    """Return the request body that svix 2.9.1 `message.create` sends for `message_in`."""
    return message_in.model_dump_json(exclude_unset=True, by_alias=True).encode()


@dataclass(frozen=True)
class SentMessage:
    msg_id: str
    event_id: str
    event_type: str
    payload: dict[str, Any]
    payload_bytes: bytes
    """The payload as the SDK serialised it inside the request body."""
    returned_event_type: str
    returned_event_id: str | None


@dataclass(frozen=True)
class ReceiverEndpoint:
    receiver: Receiver
    endpoint_id: str
    secret: str
    event_types: frozenset[str] | None
    """The endpoint's event-type filter, or None for the catch-all endpoint."""


@dataclass
class OctokitRun:
    svix: Svix
    app_id: str
    endpoints: list[ReceiverEndpoint]
    messages: dict[str, SentMessage]
    """Sent messages by the message id that message.create returned."""

    def expected_ids(self, endpoint: ReceiverEndpoint) -> set[str]:
        return {
            message.msg_id
            for message in self.messages.values()
            if endpoint.event_types is None or message.event_type in endpoint.event_types
        }


@pytest.fixture(scope="module")
def github_events() -> list[dict[str, Any]]:
    return load_github_events()


@pytest.fixture(scope="module")
def octokit_run(
    hookd_module: HookdPool, receiver_module: ReceiverPool, github_events: list[dict[str, Any]]
) -> OctokitRun:
    """Send every example once and wait, up to DELIVERY_TIMEOUT_SECONDS, for all deliveries.

    A missing delivery does not fail the fixture: test_every_expected_delivery_arrives reports it.
    """
    svix = hookd_module().client()
    app = svix.application.create(ApplicationIn(name="octokit webhook examples"))

    names = sorted(event["name"] for event in github_events)
    for event in github_events:
        svix.event_type.create(
            EventTypeIn(name=event_type_name(event["name"]), description=event["description"])
        )

    endpoints: list[ReceiverEndpoint] = []
    for index in range(FILTERED_RECEIVER_COUNT):
        event_types = [event_type_name(name) for name in names[index::FILTERED_RECEIVER_COUNT]]
        receiver = receiver_module(f"filtered-{index}")
        endpoint = svix.endpoint.create(
            app.id,
            EndpointIn(
                url=receiver.url,
                description=f"filtered receiver {index}",
                event_types=event_types,
            ),
        )
        secret = svix.endpoint.get_secret(app.id, endpoint.id).key
        endpoints.append(ReceiverEndpoint(receiver, endpoint.id, secret, frozenset(event_types)))

    catch_all = receiver_module("catch-all")
    endpoint = svix.endpoint.create(app.id, EndpointIn(url=catch_all.url, description="catch-all"))
    secret = svix.endpoint.get_secret(app.id, endpoint.id).key
    endpoints.append(ReceiverEndpoint(catch_all, endpoint.id, secret, None))

    messages: dict[str, SentMessage] = {}
    for event in github_events:
        for index, example in enumerate(event["examples"]):
            event_id = f"{event['name']}-{index}"
            event_type = event_type_name(event["name"])
            out = svix.message.create(
                app.id, MessageIn(event_type=event_type, payload=example, event_id=event_id)
            )
            messages[out.id] = SentMessage(
                msg_id=out.id,
                event_id=event_id,
                event_type=event_type,
                payload=example,
                payload_bytes=pydantic_core.to_json(example),
                returned_event_type=out.event_type,
                returned_event_id=out.event_id,
            )

    run = OctokitRun(svix, app.id, endpoints, messages)

    deadline = time.monotonic() + DELIVERY_TIMEOUT_SECONDS
    for receiver_endpoint in endpoints:
        expected = run.expected_ids(receiver_endpoint)
        while time.monotonic() < deadline:
            arrived = {request.webhook_id for request in receiver_endpoint.receiver.requests}
            if expected <= arrived:
                break
            time.sleep(0.1)
    return run


def all_deliveries(run: OctokitRun) -> list[tuple[ReceiverEndpoint, RecordedRequest]]:
    return [
        (endpoint, request) for endpoint in run.endpoints for request in endpoint.receiver.requests
    ]


def test_examples_package_counts(github_events: list[dict[str, Any]]) -> None:
    example_count = sum(len(event["examples"]) for event in github_events)
    event_names = {event["name"] for event in github_events}

    assert example_count == EXPECTED_EXAMPLE_COUNT
    assert len(event_names) == EXPECTED_EVENT_TYPE_COUNT
    assert len(github_events) == EXPECTED_EVENT_TYPE_COUNT


def test_sdk_sends_payload_as_pydantic_json(github_events: list[dict[str, Any]]) -> None:
    """The byte comparisons below assume the SDK embeds pydantic_core.to_json(payload) verbatim."""
    mismatched = []
    for event in github_events:
        for index, example in enumerate(event["examples"]):
            message_in = MessageIn(
                event_type=event_type_name(event["name"]), payload=example, event_id=f"e{index}"
            )
            body = sdk_request_body(message_in)
            if b'"payload":' + pydantic_core.to_json(example) not in body:
                mismatched.append(f"{event['name']}[{index}]")

    assert mismatched == []


def test_message_create_returns_event_fields(octokit_run: OctokitRun) -> None:
    messages = octokit_run.messages.values()
    wrong_event_ids = [m.event_id for m in messages if m.returned_event_id != m.event_id]
    wrong_event_types = [m.event_id for m in messages if m.returned_event_type != m.event_type]

    assert len(octokit_run.messages) == EXPECTED_EXAMPLE_COUNT
    assert wrong_event_ids == []
    assert wrong_event_types == []


def test_every_expected_delivery_arrives(octokit_run: OctokitRun) -> None:
    missing = {
        endpoint.receiver.name: len(
            octokit_run.expected_ids(endpoint)
            - {request.webhook_id for request in endpoint.receiver.requests}
        )
        for endpoint in octokit_run.endpoints
    }

    assert missing == {endpoint.receiver.name: 0 for endpoint in octokit_run.endpoints}


def test_catch_all_receives_every_message(octokit_run: OctokitRun) -> None:
    catch_all = octokit_run.endpoints[-1]
    received = {request.webhook_id for request in catch_all.receiver.requests}

    assert received == set(octokit_run.messages)


def test_deliveries_verify_with_endpoint_secret(octokit_run: OctokitRun) -> None:
    failures = []
    for endpoint, request in all_deliveries(octokit_run):
        try:
            Webhook(endpoint.secret).verify(request.body, request.headers)
        except WebhookVerificationError as error:
            failures.append((endpoint.receiver.name, request.webhook_id, str(error)))

    assert len(all_deliveries(octokit_run)) > 0
    assert failures == []


def test_deliveries_carry_one_signature(octokit_run: OctokitRun) -> None:
    counts = Counter(len(request.signatures) for _, request in all_deliveries(octokit_run))

    assert counts == Counter({1: len(all_deliveries(octokit_run))})


def test_webhook_id_is_message_id(octokit_run: OctokitRun) -> None:
    unknown = [
        (endpoint.receiver.name, request.webhook_id)
        for endpoint, request in all_deliveries(octokit_run)
        if request.webhook_id not in octokit_run.messages
    ]

    assert unknown == []


def test_delivery_body_equals_sent_payload_bytes(octokit_run: OctokitRun) -> None:
    mismatched = []
    for endpoint, request in all_deliveries(octokit_run):
        message = octokit_run.messages.get(request.webhook_id)
        if message is not None and request.body != message.payload_bytes:
            mismatched.append((endpoint.receiver.name, message.event_id))

    assert mismatched == []


def test_deliveries_are_json_posts_to_endpoint_path(octokit_run: OctokitRun) -> None:
    wrong = [
        (endpoint.receiver.name, request.method, request.path, request.headers.get("content-type"))
        for endpoint, request in all_deliveries(octokit_run)
        if (request.method, request.path, request.headers.get("content-type"))
        != ("POST", f"/hooks/{endpoint.receiver.name}", "application/json")
    ]

    assert wrong == []


def test_filtered_receivers_get_exactly_their_event_types(octokit_run: OctokitRun) -> None:
    for endpoint in octokit_run.endpoints[:FILTERED_RECEIVER_COUNT]:
        received_types = {
            octokit_run.messages[request.webhook_id].event_type
            for request in endpoint.receiver.requests
            if request.webhook_id in octokit_run.messages
        }

        assert received_types == endpoint.event_types, endpoint.receiver.name


def test_filters_split_event_types_without_overlap(octokit_run: OctokitRun) -> None:
    filters = [endpoint.event_types for endpoint in octokit_run.endpoints[:FILTERED_RECEIVER_COUNT]]
    covered = Counter(event_type for event_types in filters for event_type in event_types)

    assert len(covered) == EXPECTED_EVENT_TYPE_COUNT
    assert set(covered.values()) == {1}


def test_no_message_delivered_twice(octokit_run: OctokitRun) -> None:
    for endpoint in octokit_run.endpoints:
        counts = Counter(request.webhook_id for request in endpoint.receiver.requests)
        duplicated = {webhook_id: count for webhook_id, count in counts.items() if count > 1}

        assert duplicated == {}, endpoint.receiver.name


def test_endpoint_stats_count_every_success(octokit_run: OctokitRun) -> None:
    svix = octokit_run.svix
    for endpoint in octokit_run.endpoints:
        deadline = time.monotonic() + STATS_TIMEOUT_SECONDS
        stats = svix.endpoint.get_stats(octokit_run.app_id, endpoint.endpoint_id)
        while stats.pending + stats.sending > 0 and time.monotonic() < deadline:
            time.sleep(0.1)
            stats = svix.endpoint.get_stats(octokit_run.app_id, endpoint.endpoint_id)
        expected = len(octokit_run.expected_ids(endpoint))

        assert stats.success == expected, endpoint.receiver.name
        assert stats.fail == 0, endpoint.receiver.name
        assert stats.pending == 0, endpoint.receiver.name
        assert stats.sending == 0, endpoint.receiver.name
        assert stats.canceled == 0, endpoint.receiver.name


def test_stored_message_payload_equals_example(octokit_run: OctokitRun) -> None:
    svix = octokit_run.svix
    mismatched = []
    for message in octokit_run.messages.values():
        stored = svix.message.get(
            octokit_run.app_id, message.msg_id, MessageGetOptions(with_content=True)
        )
        if stored.payload != message.payload:
            mismatched.append(message.event_id)

    assert mismatched == []
