"""Walk the Svix v1 API of hookd with the official Svix Python SDK (svix 2.9.1).

Each test starts a fresh hookd instance. Deliveries go to receivers on
127.0.0.1 and are checked with the Standard Webhooks reference verifier.
In svix 2.9.1 the full-replacement calls are named `upsert` (HTTP PUT).
"""

from __future__ import annotations

import base64
import os
import time
from datetime import datetime, timedelta, timezone
from typing import Callable, TypeVar

import pydantic_core
import pytest
from standardwebhooks import Webhook
from svix.api import (
    AppPortalAccessIn,
    ApplicationIn,
    ApplicationListOptions,
    ApplicationOut,
    ApplicationPatch,
    ApplicationTokenExpireIn,
    BackgroundTaskListOptions,
    BackgroundTaskOut,
    BackgroundTaskStatus,
    BackgroundTaskType,
    BulkReplayIn,
    EndpointHeadersIn,
    EndpointHeadersPatchIn,
    EndpointIn,
    EndpointListOptions,
    EndpointPatch,
    EndpointSecretRotateIn,
    EndpointUpsertIn,
    EventExampleIn,
    EventTypeDeleteOptions,
    EventTypeIn,
    EventTypeListOptions,
    EventTypePatch,
    EventTypeUpsertIn,
    MessageAttemptListByEndpointOptions,
    MessageAttemptListByMsgOptions,
    MessageAttemptOut,
    MessageAttemptTriggerType,
    MessageGetOptions,
    MessageIn,
    MessageListOptions,
    MessageStatus,
    MessageStatusText,
    RecoverIn,
    ReplayIn,
    Svix,
)
from svix.exceptions import HttpError, HTTPValidationError

from support import (
    HookdInstance,
    HookdPool,
    Receiver,
    ReceiverPool,
    RecordedRequest,
    Respond,
    Hang,
    raw_request,
)

T = TypeVar("T")

ATTEMPT_TIMEOUT_SECONDS = 15.0


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def make_secret(byte_count: int = 32) -> str:
    """Return an endpoint secret in Svix format: "whsec_" and base64 of random bytes."""
    return "whsec_" + base64.b64encode(os.urandom(byte_count)).decode()


def raises_http_error(call: Callable[[], object]) -> HttpError:
    with pytest.raises(HttpError) as info:
        call()
    return info.value


def raises_validation_error(call: Callable[[], object]) -> HTTPValidationError:
    with pytest.raises(HTTPValidationError) as info:
        call()
    return info.value


def error_locations(error: HTTPValidationError) -> list[list[str]]:
    return [list(item.loc) for item in error.detail]


def collect_pages(fetch_page: Callable[[str | None], object]) -> list[object]:
    """Call `fetch_page(iterator)` until a page has done=true, and return every page."""
    pages = []
    iterator = None
    for _ in range(100):
        page = fetch_page(iterator)
        pages.append(page)
        if page.done:
            return pages
        iterator = page.iterator
    pytest.fail("listing returned 100 pages without done=true")


def poll(fetch: Callable[[], T], accept: Callable[[T], bool], timeout: float, description: str) -> T:
    """Call `fetch` until `accept` takes its result, and fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if accept(value):
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.1f}s waiting for {description}; last value: {value!r}")
        time.sleep(0.1)


def wait_for_attempts(
    svix: Svix, app_id: str, msg_id: str, count: int, timeout: float = ATTEMPT_TIMEOUT_SECONDS
) -> list[MessageAttemptOut]:
    page = poll(
        lambda: svix.message_attempt.list_by_msg(app_id, msg_id),
        lambda page: len(page.data) >= count,
        timeout,
        f"{count} attempts of message {msg_id}",
    )
    return page.data


def wait_for_message_status(
    svix: Svix,
    app_id: str,
    msg_id: str,
    status: MessageStatus,
    timeout: float = ATTEMPT_TIMEOUT_SECONDS,
) -> None:
    poll(
        lambda: svix.message_attempt.list_attempted_destinations(app_id, msg_id).data,
        lambda destinations: len(destinations) > 0
        and all(destination.status == status for destination in destinations),
        timeout,
        f"status {status.name} of message {msg_id} on every endpoint",
    )


def create_app(svix: Svix, name: str = "test app", uid: str | None = None) -> ApplicationOut:
    if uid is None:
        return svix.application.create(ApplicationIn(name=name))
    return svix.application.create(ApplicationIn(name=name, uid=uid))


def create_event_types(svix: Svix, *names: str) -> None:
    """Create event types, which Svix requires before an endpoint filters on them."""
    for name in names:
        svix.event_type.create(EventTypeIn(name=name, description=f"{name} events"))


def create_endpoint(
    svix: Svix, app_id: str, receiver: Receiver, secret: str | None = None, **fields: object
) -> tuple[str, str]:
    """Create an endpoint for `receiver` and return (endpoint id, signing secret)."""
    if secret is not None:
        fields["secret"] = secret
    endpoint = svix.endpoint.create(app_id, EndpointIn(url=receiver.url, **fields))
    return endpoint.id, svix.endpoint.get_secret(app_id, endpoint.id).key


def send(svix: Svix, app_id: str, payload: dict, event_type: str = "test.event", **fields: object):
    return svix.message.create(app_id, MessageIn(event_type=event_type, payload=payload, **fields))


def assert_verifies(secret: str, request: RecordedRequest) -> None:
    """Raise standardwebhooks.WebhookVerificationError unless `request` verifies with `secret`."""
    Webhook(secret).verify(request.body, request.headers)


# ---------------------------------------------------------------------------
# Applications
# ---------------------------------------------------------------------------


def test_application_create_and_get_by_id_and_uid(svix: Svix) -> None:
    created = svix.application.create(
        ApplicationIn(name="Acme", uid="acme-app", metadata={"tier": "gold"})
    )

    by_id = svix.application.get(created.id)
    by_uid = svix.application.get("acme-app")

    assert created.name == "Acme"
    assert created.uid == "acme-app"
    assert created.metadata == {"tier": "gold"}
    assert by_id.id == created.id
    assert by_id.name == "Acme"
    assert by_id.uid == "acme-app"
    assert by_id.metadata == {"tier": "gold"}
    assert by_uid.id == created.id


def test_application_duplicate_uid_conflicts(svix: Svix) -> None:
    create_app(svix, uid="dup-app")

    error = raises_http_error(lambda: create_app(svix, name="second", uid="dup-app"))

    assert error.status_code == 409


def test_application_get_or_create_returns_existing(svix: Svix) -> None:
    first = svix.application.get_or_create(ApplicationIn(name="first", uid="same-app"))
    second = svix.application.get_or_create(ApplicationIn(name="second", uid="same-app"))

    listed = svix.application.list()

    assert second.id == first.id
    assert second.name == "first"
    assert [app.id for app in listed.data] == [first.id]


def test_application_list_paginates_until_done(svix: Svix) -> None:
    created = [create_app(svix, name=f"app {index}").id for index in range(7)]

    pages = collect_pages(
        lambda iterator: svix.application.list(ApplicationListOptions(limit=3, iterator=iterator))
    )
    listed = [app.id for page in pages for app in page.data]

    assert [len(page.data) for page in pages] == [3, 3, 1]
    assert [page.done for page in pages] == [False, False, True]
    assert len(listed) == len(set(listed))
    assert sorted(listed) == sorted(created)


def test_application_upsert_replaces_fields(svix: Svix) -> None:
    app = svix.application.create(ApplicationIn(name="old", uid="upsert-app", metadata={"a": "1"}))

    updated = svix.application.upsert(app.id, ApplicationIn(name="new", uid="upsert-app"))
    fetched = svix.application.get(app.id)

    assert updated.id == app.id
    assert updated.name == "new"
    assert fetched.name == "new"
    assert fetched.uid == "upsert-app"
    assert fetched.metadata == {}


def test_application_patch_changes_only_given_field(svix: Svix) -> None:
    app = svix.application.create(ApplicationIn(name="old", uid="patch-app", metadata={"a": "1"}))

    patched = svix.application.patch(app.id, ApplicationPatch(name="new"))
    fetched = svix.application.get(app.id)

    assert patched.name == "new"
    assert fetched.name == "new"
    assert fetched.uid == "patch-app"
    assert fetched.metadata == {"a": "1"}


def test_application_delete_then_get_not_found(svix: Svix) -> None:
    app = create_app(svix, uid="doomed-app")

    svix.application.delete(app.id)
    by_id = raises_http_error(lambda: svix.application.get(app.id))
    by_uid = raises_http_error(lambda: svix.application.get("doomed-app"))

    assert by_id.status_code == 404
    assert by_id.code == "not_found"
    assert by_uid.status_code == 404


def test_application_missing_name_is_422(hookd_instance: HookdInstance) -> None:
    response = raw_request(hookd_instance, "POST", "/api/v1/app", b'{"uid":"no-name"}')

    assert response.status == 422
    assert ["body", "name"] in [item["loc"] for item in response.json()["detail"]]


# ---------------------------------------------------------------------------
# Authentication and error format
# ---------------------------------------------------------------------------


def test_wrong_token_is_401(hookd_instance: HookdInstance) -> None:
    client = hookd_instance.client(token="not-the-admin-token")

    error = raises_http_error(lambda: client.application.list())

    assert error.status_code == 401


def test_unsupported_method_is_405_json(hookd_instance: HookdInstance) -> None:
    """The SDK parses every error body as JSON, so a 405 without one raises JSONDecodeError."""
    response = raw_request(hookd_instance, "DELETE", "/api/v1/app")

    assert response.status == 405
    assert response.content_type == "application/json"
    assert isinstance(response.json()["code"], str)


def test_app_portal_token_acts_on_its_application_only(
    hookd_instance: HookdInstance, receiver: ReceiverPool
) -> None:
    svix = hookd_instance.client()
    own = create_app(svix, uid="portal-own")
    other = create_app(svix, uid="portal-other")

    access = svix.authentication.app_portal_access(own.id, AppPortalAccessIn(expiry=3600, session_id="s1"))
    portal = hookd_instance.client(token=access.token)
    endpoint_id, _ = create_endpoint(portal, "portal-own", receiver.start())

    assert access.url == f"/api/v1/app/{own.id}"
    assert [e.id for e in portal.endpoint.list(own.id).data] == [endpoint_id]
    assert raises_http_error(lambda: portal.endpoint.list(other.id)).status_code == 403
    assert raises_http_error(lambda: portal.application.list()).status_code == 403
    assert raises_http_error(
        lambda: portal.authentication.app_portal_access(own.id, AppPortalAccessIn())
    ).status_code == 403


def test_app_portal_token_ends_with_logout_and_expire_all(hookd_instance: HookdInstance) -> None:
    svix = hookd_instance.client()
    app = create_app(svix)
    first = svix.authentication.app_portal_access(app.id, AppPortalAccessIn()).token
    second = svix.authentication.app_portal_access(app.id, AppPortalAccessIn()).token

    hookd_instance.client(token=first).authentication.logout()
    svix.authentication.expire_all(app.id, ApplicationTokenExpireIn())

    for token in (first, second):
        client = hookd_instance.client(token=token)
        assert raises_http_error(lambda: client.application.get(app.id)).status_code == 401


def test_missing_token_is_401_json(hookd_instance: HookdInstance) -> None:
    response = raw_request(hookd_instance, "GET", "/api/v1/app", token=None)

    assert response.status == 401
    assert response.content_type == "application/json"
    body = response.json()
    assert isinstance(body["code"], str)
    assert isinstance(body["detail"], str)


# ---------------------------------------------------------------------------
# Event types
# ---------------------------------------------------------------------------


def test_event_type_create_and_get(svix: Svix) -> None:
    created = svix.event_type.create(
        EventTypeIn(name="invoice.paid", description="An invoice was paid")
    )

    fetched = svix.event_type.get("invoice.paid")

    assert created.name == "invoice.paid"
    assert created.description == "An invoice was paid"
    assert created.deprecated is False
    assert fetched.name == "invoice.paid"
    assert fetched.description == "An invoice was paid"
    assert fetched.archived is False


def test_event_type_duplicate_name_conflicts(svix: Svix) -> None:
    svix.event_type.create(EventTypeIn(name="dup.type", description="first"))

    error = raises_http_error(
        lambda: svix.event_type.create(EventTypeIn(name="dup.type", description="second"))
    )

    assert error.status_code == 409


def test_event_type_invalid_name_is_422(svix: Svix) -> None:
    error = raises_validation_error(
        lambda: svix.event_type.create(EventTypeIn(name="has space!", description="bad"))
    )

    assert error.status_code == 422
    assert ["body", "name"] in error_locations(error)


def test_event_type_list_paginates_until_done(svix: Svix) -> None:
    names = [f"paged.type{index}" for index in range(5)]
    for name in names:
        svix.event_type.create(EventTypeIn(name=name, description=name))

    pages = collect_pages(
        lambda iterator: svix.event_type.list(EventTypeListOptions(limit=2, iterator=iterator))
    )
    listed = [event_type.name for page in pages for event_type in page.data]

    assert [len(page.data) for page in pages] == [2, 2, 1]
    assert [page.done for page in pages] == [False, False, True]
    assert sorted(listed) == names


def test_event_type_upsert_replaces_description(svix: Svix) -> None:
    svix.event_type.create(EventTypeIn(name="order.shipped", description="old", deprecated=True))

    updated = svix.event_type.upsert("order.shipped", EventTypeUpsertIn(description="new"))
    fetched = svix.event_type.get("order.shipped")

    assert updated.description == "new"
    assert fetched.description == "new"
    assert fetched.deprecated is False


def test_event_type_upsert_creates_missing(svix: Svix) -> None:
    created = svix.event_type.upsert("brand.new", EventTypeUpsertIn(description="created by PUT"))

    fetched = svix.event_type.get("brand.new")

    assert created.name == "brand.new"
    assert fetched.description == "created by PUT"


def test_event_type_patch_changes_only_given_field(svix: Svix) -> None:
    svix.event_type.create(EventTypeIn(name="user.created", description="keep me"))

    patched = svix.event_type.patch("user.created", EventTypePatch(deprecated=True))
    fetched = svix.event_type.get("user.created")

    assert patched.deprecated is True
    assert fetched.deprecated is True
    assert fetched.description == "keep me"


def test_event_type_delete_archives(svix: Svix) -> None:
    svix.event_type.create(EventTypeIn(name="old.type", description="to archive"))
    svix.event_type.create(EventTypeIn(name="kept.type", description="stays"))

    svix.event_type.delete("old.type")
    fetched = svix.event_type.get("old.type")
    listed = [event_type.name for event_type in svix.event_type.list().data]
    listed_with_archived = [
        event_type.name
        for event_type in svix.event_type.list(EventTypeListOptions(include_archived=True)).data
    ]

    assert fetched.archived is True
    assert listed == ["kept.type"]
    assert sorted(listed_with_archived) == ["kept.type", "old.type"]


def test_event_type_expunge_then_get_not_found(svix: Svix) -> None:
    svix.event_type.create(EventTypeIn(name="gone.type", description="to expunge"))

    svix.event_type.delete("gone.type", EventTypeDeleteOptions(expunge=True))
    error = raises_http_error(lambda: svix.event_type.get("gone.type"))

    assert error.status_code == 404
    assert error.code == "not_found"


# ---------------------------------------------------------------------------
# Endpoints
# ---------------------------------------------------------------------------


def test_endpoint_create_and_get_by_id_and_uid(svix: Svix, receiver: ReceiverPool) -> None:
    app = create_app(svix)
    create_event_types(svix, "a.one", "a.two")
    hook = receiver("ep")
    secret = make_secret()

    created = svix.endpoint.create(
        app.id,
        EndpointIn(
            url=hook.url,
            uid="ep-uid",
            description="primary",
            event_types=["a.one", "a.two"],
            channels=["project-1"],
            secret=secret,
            metadata={"owner": "team-a"},
        ),
    )
    by_id = svix.endpoint.get(app.id, created.id)
    by_uid = svix.endpoint.get(app.id, "ep-uid")

    assert created.url == hook.url
    assert created.uid == "ep-uid"
    assert created.description == "primary"
    assert sorted(created.event_types or []) == ["a.one", "a.two"]
    assert created.channels == ["project-1"]
    assert created.metadata == {"owner": "team-a"}
    assert created.disabled is False
    assert by_id.id == created.id
    assert by_id.url == hook.url
    assert by_uid.id == created.id
    assert svix.endpoint.get_secret(app.id, created.id).key == secret
    assert svix.endpoint.get_secret(app.id, "ep-uid").key == secret


def test_endpoint_generated_secret_is_whsec(svix: Svix, receiver: ReceiverPool) -> None:
    app = create_app(svix)
    endpoint = svix.endpoint.create(app.id, EndpointIn(url=receiver("gen").url))

    key = svix.endpoint.get_secret(app.id, endpoint.id).key
    secret_bytes = base64.b64decode(key.removeprefix("whsec_"), validate=True)

    assert key.startswith("whsec_")
    assert 24 <= len(secret_bytes) <= 64


def test_endpoint_list_paginates_until_done(svix: Svix, receiver: ReceiverPool) -> None:
    app = create_app(svix)
    hook = receiver("many")
    created = [
        svix.endpoint.create(app.id, EndpointIn(url=f"{hook.url}/{index}")).id for index in range(5)
    ]

    pages = collect_pages(
        lambda iterator: svix.endpoint.list(app.id, EndpointListOptions(limit=2, iterator=iterator))
    )
    listed = [endpoint.id for page in pages for endpoint in page.data]

    assert [len(page.data) for page in pages] == [2, 2, 1]
    assert [page.done for page in pages] == [False, False, True]
    assert sorted(listed) == sorted(created)


def test_endpoint_upsert_replaces_fields(svix: Svix, receiver: ReceiverPool) -> None:
    app = create_app(svix)
    create_event_types(svix, "a.one")
    first, second = receiver("first"), receiver("second")
    endpoint = svix.endpoint.create(
        app.id, EndpointIn(url=first.url, description="old", event_types=["a.one"])
    )

    updated = svix.endpoint.upsert(
        app.id, endpoint.id, EndpointUpsertIn(url=second.url, description="new")
    )
    fetched = svix.endpoint.get(app.id, endpoint.id)

    assert updated.id == endpoint.id
    assert fetched.url == second.url
    assert fetched.description == "new"
    assert fetched.event_types is None


def test_endpoint_patch_changes_only_given_field(svix: Svix, receiver: ReceiverPool) -> None:
    app = create_app(svix)
    create_event_types(svix, "a.one")
    hook = receiver("patch")
    endpoint = svix.endpoint.create(
        app.id,
        EndpointIn(
            url=hook.url, description="old", event_types=["a.one"], channels=["c1"], uid="p-uid"
        ),
    )

    patched = svix.endpoint.patch(app.id, endpoint.id, EndpointPatch(description="new"))
    fetched = svix.endpoint.get(app.id, endpoint.id)

    assert patched.description == "new"
    assert fetched.description == "new"
    assert fetched.url == hook.url
    assert fetched.event_types == ["a.one"]
    assert fetched.channels == ["c1"]
    assert fetched.uid == "p-uid"


def test_endpoint_delete_then_get_not_found(svix: Svix, receiver: ReceiverPool) -> None:
    app = create_app(svix)
    endpoint = svix.endpoint.create(app.id, EndpointIn(url=receiver("del").url))

    svix.endpoint.delete(app.id, endpoint.id)
    error = raises_http_error(lambda: svix.endpoint.get(app.id, endpoint.id))

    assert error.status_code == 404
    assert error.code == "not_found"


def test_endpoint_unknown_filter_event_type_is_422(svix: Svix, receiver: ReceiverPool) -> None:
    app = create_app(svix)
    create_event_types(svix, "a.one")

    error = raises_validation_error(
        lambda: svix.endpoint.create(
            app.id, EndpointIn(url=receiver("unknown").url, event_types=["a.one", "no.such.type"])
        )
    )

    assert error.status_code == 422


def test_endpoint_invalid_secret_is_422(svix: Svix, receiver: ReceiverPool) -> None:
    app = create_app(svix)

    error = raises_validation_error(
        lambda: svix.endpoint.create(
            app.id, EndpointIn(url=receiver("bad-secret").url, secret="not-a-secret")
        )
    )

    assert error.status_code == 422
    assert error_locations(error) == [["body", "secret"]]


@pytest.mark.parametrize("byte_count", [23, 65])
def test_endpoint_secret_length_out_of_range(
    svix: Svix, receiver: ReceiverPool, byte_count: int
) -> None:
    app = create_app(svix)

    error = raises_validation_error(
        lambda: svix.endpoint.create(
            app.id, EndpointIn(url=receiver("len").url, secret=make_secret(byte_count))
        )
    )

    assert error.status_code == 422
    assert error_locations(error) == [["body", "secret"]]


@pytest.mark.parametrize("byte_count", [24, 64])
def test_endpoint_secret_length_at_bounds(
    svix: Svix, receiver: ReceiverPool, byte_count: int
) -> None:
    app = create_app(svix)
    secret = make_secret(byte_count)

    endpoint = svix.endpoint.create(app.id, EndpointIn(url=receiver("len").url, secret=secret))

    assert svix.endpoint.get_secret(app.id, endpoint.id).key == secret


@pytest.mark.parametrize("url", ["not a url", "ftp://127.0.0.1:21/hook", "http://"])
def test_endpoint_invalid_url_is_422(svix: Svix, url: str) -> None:
    app = create_app(svix)

    error = raises_validation_error(lambda: svix.endpoint.create(app.id, EndpointIn(url=url)))

    assert error.status_code == 422
    assert error_locations(error) == [["body", "url"]]


@pytest.mark.parametrize("host", ["127.0.0.2", "[::1]", "0.0.0.0"])
def test_endpoint_url_outside_allowed_networks_is_422(
    svix: Svix, receiver: ReceiverPool, host: str
) -> None:
    """HOOKD_ALLOWED_NETWORKS=127.0.0.1/32 lets 127.0.0.1 through but no other local address."""
    app = create_app(svix)
    port = receiver("ssrf").port

    error = raises_validation_error(
        lambda: svix.endpoint.create(app.id, EndpointIn(url=f"http://{host}:{port}/hook"))
    )

    assert error.status_code == 422
    assert error_locations(error) == [["body", "url"]]


def test_endpoint_headers_set_get_patch(svix: Svix, receiver: ReceiverPool) -> None:
    app = create_app(svix)
    endpoint = svix.endpoint.create(app.id, EndpointIn(url=receiver("hdr").url))

    svix.endpoint.set_headers(
        app.id, endpoint.id, EndpointHeadersIn(headers={"x-tenant": "acme", "x-region": "eu"})
    )
    after_set = svix.endpoint.get_headers(app.id, endpoint.id)
    svix.endpoint.patch_headers(
        app.id,
        endpoint.id,
        EndpointHeadersPatchIn(headers={"x-trace": "on"}, delete_headers=["x-region"]),
    )
    after_patch = svix.endpoint.get_headers(app.id, endpoint.id)

    assert after_set.headers == {"x-tenant": "acme", "x-region": "eu"}
    assert after_patch.headers == {"x-tenant": "acme", "x-trace": "on"}


def test_endpoint_custom_headers_arrive(svix: Svix, receiver: ReceiverPool) -> None:
    app = create_app(svix)
    hook = receiver("custom-headers")
    endpoint_id, secret = create_endpoint(svix, app.id, hook, headers={"x-created": "yes"})
    svix.endpoint.patch_headers(
        app.id, endpoint_id, EndpointHeadersPatchIn(headers={"x-tenant": "acme"})
    )

    send(svix, app.id, {"n": 1})
    [request] = hook.wait_for_requests(1)

    assert request.headers.get("x-created") == "yes"
    assert request.headers.get("x-tenant") == "acme"
    assert_verifies(secret, request)


def test_endpoint_event_type_filter_and_channels(svix: Svix, receiver: ReceiverPool) -> None:
    app = create_app(svix)
    create_event_types(svix, "a.one", "a.two")
    filtered, everything = receiver("filtered"), receiver("everything")
    create_endpoint(svix, app.id, filtered, event_types=["a.one"], channels=["project-1"])
    create_endpoint(svix, app.id, everything)

    matching = send(svix, app.id, {"n": 1}, event_type="a.one", channels=["project-1", "x"])
    wrong_type = send(svix, app.id, {"n": 2}, event_type="a.two", channels=["project-1"])
    wrong_channel = send(svix, app.id, {"n": 3}, event_type="a.one", channels=["project-2"])
    no_channel = send(svix, app.id, {"n": 4}, event_type="a.one")
    sent_ids = {matching.id, wrong_type.id, wrong_channel.id, no_channel.id}
    everything.wait_for_webhook_ids(sent_ids, timeout=ATTEMPT_TIMEOUT_SECONDS)
    filtered.wait_for_webhook_ids({matching.id}, timeout=ATTEMPT_TIMEOUT_SECONDS)

    assert [request.webhook_id for request in filtered.requests] == [matching.id]
    assert len(everything.requests) == 4


def test_disabled_endpoint_gets_no_delivery(svix: Svix, receiver: ReceiverPool) -> None:
    app = create_app(svix)
    enabled, disabled = receiver("enabled"), receiver("disabled")
    enabled_id, _ = create_endpoint(svix, app.id, enabled)
    disabled_id, _ = create_endpoint(svix, app.id, disabled)
    svix.endpoint.patch(app.id, disabled_id, EndpointPatch(disabled=True))

    message = send(svix, app.id, {"n": 1})
    enabled.wait_for_webhook_ids({message.id}, timeout=ATTEMPT_TIMEOUT_SECONDS)
    wait_for_message_status(svix, app.id, message.id, MessageStatus.SUCCESS)
    destinations = svix.message_attempt.list_attempted_destinations(app.id, message.id).data

    assert svix.endpoint.get(app.id, disabled_id).disabled is True
    assert [destination.id for destination in destinations] == [enabled_id]
    assert disabled.requests == []


def test_endpoint_stats_count_success_and_failure(svix: Svix, receiver: ReceiverPool) -> None:
    app = create_app(svix)
    hook = receiver("stats")
    hook.respond_with(Respond(200), default=Respond(500))
    endpoint_id, _ = create_endpoint(svix, app.id, hook)

    ok = send(svix, app.id, {"n": 1})
    wait_for_message_status(svix, app.id, ok.id, MessageStatus.SUCCESS)
    failed = send(svix, app.id, {"n": 2})
    wait_for_message_status(svix, app.id, failed.id, MessageStatus.FAIL)
    stats = svix.endpoint.get_stats(app.id, endpoint_id)

    assert stats.success == 1
    assert stats.fail == 1
    assert stats.pending == 0
    assert stats.sending == 0


# ---------------------------------------------------------------------------
# Secret rotation
# ---------------------------------------------------------------------------


def test_rotate_secret_signs_with_old_and_new(svix: Svix, receiver: ReceiverPool) -> None:
    app = create_app(svix)
    hook = receiver("rotate")
    old_secret, new_secret = make_secret(), make_secret()
    endpoint_id, _ = create_endpoint(svix, app.id, hook, secret=old_secret)

    rotated = svix.endpoint.rotate_secret(app.id, endpoint_id, EndpointSecretRotateIn(key=new_secret))
    message = send(svix, app.id, {"after": "rotation"})
    [request] = hook.wait_for_requests(1)
    timestamp = datetime.fromtimestamp(int(request.headers["webhook-timestamp"]), tz=timezone.utc)
    expected_signatures = {
        Webhook(secret).sign(message.id, timestamp, request.body)
        for secret in (old_secret, new_secret)
    }

    assert rotated.key == new_secret
    assert svix.endpoint.get_secret(app.id, endpoint_id).key == new_secret
    assert len(request.signatures) == 2
    assert set(request.signatures) == expected_signatures
    assert_verifies(old_secret, request)
    assert_verifies(new_secret, request)


def test_rotate_secret_without_key_generates_one(svix: Svix, receiver: ReceiverPool) -> None:
    app = create_app(svix)
    hook = receiver("rotate-generated")
    old_secret = make_secret()
    endpoint_id, _ = create_endpoint(svix, app.id, hook, secret=old_secret)

    rotated = svix.endpoint.rotate_secret(app.id, endpoint_id, EndpointSecretRotateIn())
    new_secret = svix.endpoint.get_secret(app.id, endpoint_id).key
    send(svix, app.id, {"after": "rotation"})
    [request] = hook.wait_for_requests(1)

    assert rotated.key == new_secret
    assert new_secret != old_secret
    assert new_secret.startswith("whsec_")
    assert len(request.signatures) == 2
    assert_verifies(old_secret, request)
    assert_verifies(new_secret, request)


# ---------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------


def test_message_create_get_by_id_and_event_id(svix: Svix, receiver: ReceiverPool) -> None:
    app = create_app(svix)
    hook = receiver("msg")
    _, secret = create_endpoint(svix, app.id, hook)
    payload = {"invoice": {"id": "in_1", "amount": 1200, "paid": True}, "tags": ["a", "b"]}

    created = send(
        svix, app.id, payload, event_type="invoice.paid", event_id="evt-1", channels=["project-1"]
    )
    by_id = svix.message.get(app.id, created.id, MessageGetOptions(with_content=True))
    by_event_id = svix.message.get(app.id, "evt-1", MessageGetOptions(with_content=True))
    without_content = svix.message.get(app.id, created.id)
    [request] = hook.wait_for_requests(1)

    assert created.event_type == "invoice.paid"
    assert created.event_id == "evt-1"
    assert created.channels == ["project-1"]
    assert by_id.id == created.id
    assert by_id.payload == payload
    assert by_id.event_type == "invoice.paid"
    assert by_event_id.id == created.id
    assert without_content.payload == {}
    assert request.webhook_id == created.id
    assert request.body == pydantic_core.to_json(payload)
    assert_verifies(secret, request)


def test_message_event_id_deduplicates(svix: Svix, receiver: ReceiverPool) -> None:
    app = create_app(svix)
    hook = receiver("dedup")
    create_endpoint(svix, app.id, hook)

    first = send(svix, app.id, {"n": 1}, event_id="once")
    second = send(svix, app.id, {"n": 1}, event_id="once")
    later = send(svix, app.id, {"n": 2}, event_id="later")
    hook.wait_for_webhook_ids({first.id, later.id}, timeout=ATTEMPT_TIMEOUT_SECONDS)
    messages = svix.message.list(app.id).data

    assert second.id == first.id
    assert sorted(message.id for message in messages) == sorted([first.id, later.id])
    assert [request.webhook_id for request in hook.requests].count(first.id) == 1
    assert len(svix.message_attempt.list_by_msg(app.id, first.id).data) == 1


def test_message_list_paginates_until_done(svix: Svix) -> None:
    app = create_app(svix)
    sent = [send(svix, app.id, {"n": index}).id for index in range(5)]

    pages = collect_pages(
        lambda iterator: svix.message.list(
            app.id, MessageListOptions(limit=2, iterator=iterator, with_content=True)
        )
    )
    listed = {message.id: message.payload for page in pages for message in page.data}

    assert [len(page.data) for page in pages] == [2, 2, 1]
    assert [page.done for page in pages] == [False, False, True]
    assert sorted(listed) == sorted(sent)
    assert sorted(payload["n"] for payload in listed.values()) == [0, 1, 2, 3, 4]


def test_message_create_by_app_uid(svix: Svix, receiver: ReceiverPool) -> None:
    app = create_app(svix, uid="by-uid-app")
    hook = receiver("by-uid")
    create_endpoint(svix, "by-uid-app", hook)

    message = send(svix, "by-uid-app", {"n": 1})
    [request] = hook.wait_for_requests(1)
    listed = svix.message.list(app.id).data

    assert request.webhook_id == message.id
    assert [item.id for item in listed] == [message.id]


def test_message_deleted_app_is_404(svix: Svix) -> None:
    app = create_app(svix)
    message = send(svix, app.id, {"n": 1})

    svix.application.delete(app.id)
    error = raises_http_error(lambda: svix.message.get(app.id, message.id))

    assert error.status_code == 404


def test_message_unknown_app_is_404(svix: Svix) -> None:
    error = raises_http_error(lambda: send(svix, "app_does_not_exist", {"n": 1}))

    assert error.status_code == 404
    assert error.code == "not_found"


@pytest.mark.parametrize("payload", [b"[1,2]", b'"text"', b"12", b"null"])
def test_message_payload_not_object_is_422(hookd_instance: HookdInstance, payload: bytes) -> None:
    app = create_app(hookd_instance.client())
    body = b'{"eventType":"t.x","payload":' + payload + b"}"

    response = raw_request(hookd_instance, "POST", f"/api/v1/app/{app.id}/msg", body)

    assert response.status == 422
    assert ["body", "payload"] in [item["loc"] for item in response.json()["detail"]]


RAW_PAYLOADS = [
    pytest.param(
        # The exact escapes must survive: \u2028, \u00e9, an escaped backslash,
        # escaped quotes, an exponent and raw UTF-8 for € and 😀.
        '{"s":"\\u2028 caf\\u00e9 \\\\/ \\"q\\"","n":1.0e10,"u":"€😀"}'.encode(),
        id="escapes-and-utf8",
    ),
    pytest.param(
        # Whitespace, an escaped solidus, a negative zero and a deep nesting.
        '{ "path" : "a\\/b" ,\n "z": -0, "deep": [[{"k": [1, 2.50, -3e-2]}]] }'.encode(),
        id="whitespace-and-solidus",
    ),
]


@pytest.mark.parametrize("payload", RAW_PAYLOADS)
def test_raw_payload_bytes_delivered_verbatim(
    hookd_instance: HookdInstance, receiver: ReceiverPool, payload: bytes
) -> None:
    svix = hookd_instance.client()
    app = create_app(svix)
    svix.event_type.create(EventTypeIn(name="t.x", description="raw bytes"))
    hook = receiver("raw")
    _, secret = create_endpoint(svix, app.id, hook)
    body = b'{"eventType":"t.x","payload":' + payload + b"}"

    response = raw_request(hookd_instance, "POST", f"/api/v1/app/{app.id}/msg", body)
    [request] = hook.wait_for_requests(1)

    assert 200 <= response.status < 300
    assert request.webhook_id == response.json()["id"]
    assert request.body == payload
    assert_verifies(secret, request)


# ---------------------------------------------------------------------------
# Attempts, resend, retries, recovery
# ---------------------------------------------------------------------------


def test_attempt_listings_describe_success(svix: Svix, receiver: ReceiverPool) -> None:
    app = create_app(svix)
    hook = receiver("attempts", default=Respond(200, body=b"thanks"))
    endpoint_id, _ = create_endpoint(svix, app.id, hook)

    message = send(svix, app.id, {"n": 1}, event_type="a.one")
    [attempt] = wait_for_attempts(svix, app.id, message.id, 1)
    by_endpoint = svix.message_attempt.list_by_endpoint(app.id, endpoint_id).data
    fetched = svix.message_attempt.get(app.id, message.id, attempt.id)
    attempted_messages = svix.message_attempt.list_attempted_messages(app.id, endpoint_id).data
    destinations = svix.message_attempt.list_attempted_destinations(app.id, message.id).data

    assert attempt.msg_id == message.id
    assert attempt.endpoint_id == endpoint_id
    assert attempt.url == hook.url
    assert attempt.response_status_code == 200
    assert attempt.response == "thanks"
    assert attempt.status == MessageStatus.SUCCESS
    assert attempt.status_text == MessageStatusText.SUCCESS
    assert attempt.trigger_type == MessageAttemptTriggerType.SCHEDULED
    assert [item.id for item in by_endpoint] == [attempt.id]
    assert fetched.id == attempt.id
    assert fetched.response_status_code == 200
    assert [item.id for item in attempted_messages] == [message.id]
    assert attempted_messages[0].status == MessageStatus.SUCCESS
    assert attempted_messages[0].event_type == "a.one"
    assert [item.id for item in destinations] == [endpoint_id]
    assert destinations[0].status == MessageStatus.SUCCESS
    assert destinations[0].url == hook.url


def test_attempt_filters_by_status_and_endpoint(svix: Svix, receiver: ReceiverPool) -> None:
    app = create_app(svix)
    good, bad = receiver("good"), receiver("bad", default=Respond(500))
    good_id, _ = create_endpoint(svix, app.id, good)
    bad_id, _ = create_endpoint(svix, app.id, bad)

    message = send(svix, app.id, {"n": 1})
    wait_for_attempts(svix, app.id, message.id, 3)
    successes = svix.message_attempt.list_by_msg(
        app.id, message.id, MessageAttemptListByMsgOptions(status=MessageStatus.SUCCESS)
    ).data
    on_bad = svix.message_attempt.list_by_msg(
        app.id, message.id, MessageAttemptListByMsgOptions(endpoint_id=bad_id)
    ).data
    failures_on_bad = svix.message_attempt.list_by_endpoint(
        app.id, bad_id, MessageAttemptListByEndpointOptions(status=MessageStatus.FAIL)
    ).data

    assert [attempt.endpoint_id for attempt in successes] == [good_id]
    assert [attempt.response_status_code for attempt in on_bad] == [500, 500]
    assert len(failures_on_bad) == 2


def test_resend_delivers_second_copy(svix: Svix, receiver: ReceiverPool) -> None:
    app = create_app(svix)
    hook = receiver("resend")
    endpoint_id, secret = create_endpoint(svix, app.id, hook)

    message = send(svix, app.id, {"n": 1})
    hook.wait_for_requests(1)
    wait_for_attempts(svix, app.id, message.id, 1)
    svix.message_attempt.resend(app.id, message.id, endpoint_id)
    first, second = hook.wait_for_requests(2)
    attempts = wait_for_attempts(svix, app.id, message.id, 2)

    assert second.webhook_id == message.id
    assert second.body == first.body
    assert_verifies(secret, second)
    assert sorted(attempt.trigger_type for attempt in attempts) == [
        MessageAttemptTriggerType.SCHEDULED,
        MessageAttemptTriggerType.MANUAL,
    ]


def test_send_example_delivers_schema_example(svix: Svix, receiver: ReceiverPool) -> None:
    schemas = {"1": {"type": "object", "examples": [{"userId": "u_1"}, {"userId": "u_2"}]}}
    svix.event_type.create(EventTypeIn(name="user.signup", description="signup", schemas=schemas))
    app = create_app(svix)
    hook = receiver("send-example")
    endpoint_id, secret = create_endpoint(svix, app.id, hook)
    create_endpoint(svix, app.id, receiver("send-example-other"))

    message = svix.endpoint.send_example(
        app.id, endpoint_id, EventExampleIn(event_type="user.signup", example_index=1)
    )
    (request,) = hook.wait_for_requests(1)
    attempts = wait_for_attempts(svix, app.id, message.id, 1)
    destinations = svix.message_attempt.list_attempted_destinations(app.id, message.id).data

    assert message.event_type == "user.signup"
    assert message.payload == {"userId": "u_2"}
    assert request.webhook_id == message.id
    assert_verifies(secret, request)
    assert [attempt.trigger_type for attempt in attempts] == [MessageAttemptTriggerType.MANUAL]
    assert [destination.id for destination in destinations] == [endpoint_id]


def test_retry_redelivers_same_message(hookd: HookdPool, receiver: ReceiverPool) -> None:
    svix = hookd(env={"HOOKD_RETRY_SCHEDULE": "1s,1s"}).client()
    app = create_app(svix)
    hook = receiver("retry")
    hook.respond_with(Respond(503))
    _, secret = create_endpoint(svix, app.id, hook)

    message = send(svix, app.id, {"n": 1})
    first, second = hook.wait_for_requests(2)
    wait_for_message_status(svix, app.id, message.id, MessageStatus.SUCCESS)
    attempts = wait_for_attempts(svix, app.id, message.id, 2)

    assert first.webhook_id == message.id
    assert second.webhook_id == message.id
    assert second.body == first.body
    # The 1 s delay is jittered by a factor from 0.8 to 1.2.
    assert second.arrived_at - first.arrived_at >= 0.79
    assert_verifies(secret, first)
    assert_verifies(secret, second)
    assert sorted(attempt.response_status_code for attempt in attempts) == [200, 503]
    assert len(hook.requests) == 2


def test_exhausted_retries_mark_message_failed(hookd: HookdPool, receiver: ReceiverPool) -> None:
    svix = hookd(env={"HOOKD_RETRY_SCHEDULE": "1s,1s"}).client()
    app = create_app(svix)
    hook = receiver("always-fails", default=Respond(500))
    endpoint_id, _ = create_endpoint(svix, app.id, hook)

    message = send(svix, app.id, {"n": 1})
    hook.wait_for_requests(3)
    wait_for_message_status(svix, app.id, message.id, MessageStatus.FAIL)
    attempts = wait_for_attempts(svix, app.id, message.id, 3)
    attempted = svix.message_attempt.list_attempted_messages(app.id, endpoint_id).data

    assert [attempt.response_status_code for attempt in attempts] == [500, 500, 500]
    assert [attempt.status for attempt in attempts] == [MessageStatus.FAIL] * 3
    assert [item.status for item in attempted] == [MessageStatus.FAIL]
    assert len(hook.requests) == 3


def test_request_timeout_fails_attempt(hookd: HookdPool, receiver: ReceiverPool) -> None:
    svix = hookd(env={"HOOKD_REQUEST_TIMEOUT": "1s", "HOOKD_RETRY_SCHEDULE": "1s"}).client()
    app = create_app(svix)
    hook = receiver("hangs", default=Hang())
    create_endpoint(svix, app.id, hook)

    message = send(svix, app.id, {"n": 1})
    hook.wait_for_requests(2)
    wait_for_message_status(svix, app.id, message.id, MessageStatus.FAIL)
    attempts = wait_for_attempts(svix, app.id, message.id, 2)

    assert [attempt.status for attempt in attempts] == [MessageStatus.FAIL] * 2
    assert len(hook.requests) == 2


def test_slow_receiver_within_timeout_succeeds(hookd: HookdPool, receiver: ReceiverPool) -> None:
    svix = hookd(env={"HOOKD_REQUEST_TIMEOUT": "3s"}).client()
    app = create_app(svix)
    hook = receiver("slow", default=Respond(200, delay=1.0))
    create_endpoint(svix, app.id, hook)

    message = send(svix, app.id, {"n": 1})
    wait_for_message_status(svix, app.id, message.id, MessageStatus.SUCCESS)
    [attempt] = wait_for_attempts(svix, app.id, message.id, 1)

    assert attempt.response_status_code == 200
    assert attempt.response_duration_ms >= 900
    assert len(hook.requests) == 1


def test_recover_redelivers_failed_messages(hookd: HookdPool, receiver: ReceiverPool) -> None:
    svix = hookd(env={"HOOKD_RETRY_SCHEDULE": "1s"}).client()
    app = create_app(svix)
    hook = receiver("recover")
    endpoint_id, secret = create_endpoint(svix, app.id, hook)
    since = datetime.now(timezone.utc) - timedelta(minutes=1)

    delivered = send(svix, app.id, {"n": 1})
    wait_for_message_status(svix, app.id, delivered.id, MessageStatus.SUCCESS)
    hook.respond_with(default=Respond(500))
    failed = send(svix, app.id, {"n": 2})
    wait_for_message_status(svix, app.id, failed.id, MessageStatus.FAIL)
    hook.respond_with(default=Respond(200))
    recovery = svix.endpoint.recover(app.id, endpoint_id, RecoverIn(since=since))
    hook.wait_for_requests(4)
    wait_for_message_status(svix, app.id, failed.id, MessageStatus.SUCCESS)
    attempts = svix.message_attempt.list_by_msg(app.id, failed.id).data
    delivered_ids = [request.webhook_id for request in hook.requests]

    assert recovery.task == BackgroundTaskType.ENDPOINT_RECOVER
    assert delivered_ids == [delivered.id, failed.id, failed.id, failed.id]
    assert_verifies(secret, hook.requests[-1])
    assert sorted(attempt.response_status_code for attempt in attempts) == [200, 500, 500]


def wait_for_task(svix: Svix, task_id: str) -> BackgroundTaskOut:
    return poll(
        lambda: svix.background_task.get(task_id),
        lambda task: task.status != BackgroundTaskStatus.RUNNING,
        ATTEMPT_TIMEOUT_SECONDS,
        f"background task {task_id} to end",
    )


def test_replay_missing_recover_and_bulk_replay(hookd: HookdPool, receiver: ReceiverPool) -> None:
    svix = hookd(env={"HOOKD_RETRY_SCHEDULE": "1s"}).client()
    app = create_app(svix)
    hook = receiver("replay")
    endpoint_id, secret = create_endpoint(svix, app.id, hook)
    since = datetime.now(timezone.utc) - timedelta(minutes=1)

    svix.endpoint.patch(app.id, endpoint_id, EndpointPatch(disabled=True))
    missed = send(svix, app.id, {"n": 1})
    svix.endpoint.patch(app.id, endpoint_id, EndpointPatch(disabled=False))
    replay = svix.endpoint.replay_missing(app.id, endpoint_id, ReplayIn(since=since))
    (replayed,) = hook.wait_for_requests(1)
    replay_done = wait_for_task(svix, replay.id)

    hook.respond_with(default=Respond(500))
    failed = send(svix, app.id, {"n": 2})
    wait_for_message_status(svix, app.id, failed.id, MessageStatus.FAIL)
    hook.respond_with(default=Respond(200))
    recovery = svix.endpoint.recover(app.id, endpoint_id, RecoverIn(since=since))
    recovered = hook.wait_for_requests(4)[-1]
    recovery_done = wait_for_task(svix, recovery.id)

    wait_for_message_status(svix, app.id, failed.id, MessageStatus.SUCCESS)
    bulk = svix.endpoint.bulk_replay(
        app.id, endpoint_id, BulkReplayIn(since=since, event_types=["test.event"])
    )
    bulk_requests = hook.wait_for_requests(6)[4:]
    bulk_done = wait_for_task(svix, bulk.id)
    recover_tasks = svix.background_task.list(
        BackgroundTaskListOptions(task=BackgroundTaskType.ENDPOINT_RECOVER)
    ).data

    assert replay.task == BackgroundTaskType.ENDPOINT_REPLAY
    assert replay.status == BackgroundTaskStatus.RUNNING
    assert replay_done.status == BackgroundTaskStatus.FINISHED
    assert replay_done.data["messagesSent"] == 1
    assert replayed.webhook_id == missed.id
    assert_verifies(secret, replayed)
    assert recovery.task == BackgroundTaskType.ENDPOINT_RECOVER
    assert recovery_done.data["messagesSent"] == 1
    assert recovered.webhook_id == failed.id
    assert_verifies(secret, recovered)
    assert bulk.task == BackgroundTaskType.ENDPOINT_BULK_REPLAY
    assert bulk_done.data["messagesSent"] == 2
    assert sorted(request.webhook_id for request in bulk_requests) == sorted([missed.id, failed.id])
    assert [task.id for task in recover_tasks] == [recovery.id]


def test_expunged_content_reads_expired(svix: Svix, receiver: ReceiverPool) -> None:
    app = create_app(svix)
    hook = receiver("expunge", default=Respond(200, body=b"account 42"))
    create_endpoint(svix, app.id, hook)

    message = send(svix, app.id, {"card": "4111"})
    [attempt] = wait_for_attempts(svix, app.id, message.id, 1)
    svix.message.expunge_content(app.id, message.id)
    svix.message_attempt.expunge_content(app.id, message.id, attempt.id)
    fetched = svix.message.get(app.id, message.id, MessageGetOptions(with_content=True))
    fetched_attempt = svix.message_attempt.get(app.id, message.id, attempt.id)

    assert attempt.response == "account 42"
    assert fetched.payload == {"expired": True}
    assert fetched_attempt.response == "EXPUNGED"


def test_pending_retry_survives_restart(hookd: HookdPool, receiver: ReceiverPool) -> None:
    instance = hookd(env={"HOOKD_RETRY_SCHEDULE": "3s"})
    svix = instance.client()
    app = create_app(svix, uid="durable-app")
    hook = receiver("durable")
    hook.respond_with(Respond(503))
    _, secret = create_endpoint(svix, app.id, hook)

    message = send(svix, app.id, {"n": 1})
    hook.wait_for_requests(1)
    wait_for_attempts(svix, app.id, message.id, 1)
    exit_code = instance.stop()
    instance.restart()
    restarted = instance.client()
    first, second = hook.wait_for_requests(2, timeout=20)

    assert exit_code == 0
    assert restarted.application.get("durable-app").id == app.id
    assert second.webhook_id == message.id
    assert second.body == first.body
    assert_verifies(secret, second)
