"""Read an endpoint's message feed with the poller API of the official Svix
Python SDK (svix 2.9.1): plain polls with an iterator, and a named consumer
whose position hookd stores, moved with seek."""

from __future__ import annotations

from svix.api import (
    ApplicationIn,
    EndpointIn,
    EventTypeIn,
    MessageIn,
    MessagePollerConsumerPollOptions,
    MessagePollerPollOptions,
    PollingEndpointConsumerSeekIn,
    Svix,
)

from support import HookdPool


def test_poller_reads_feed_in_order(hookd: HookdPool) -> None:
    svix: Svix = hookd().client()
    for name in ("order.created", "order.paid"):
        svix.event_type.create(EventTypeIn(name=name, description=name))
    app = svix.application.create(ApplicationIn(name="poller", uid="poller-app"))
    sink = svix.endpoint.create(
        app.id, EndpointIn(url="http://127.0.0.1:9/", uid="feed", event_types=["order.paid"])
    )
    sent = [
        svix.message.create(
            app.id,
            MessageIn(event_type="order.paid" if n % 2 else "order.created", payload={"n": n}),
        )
        for n in range(6)
    ]
    paid = [message.id for message in sent if message.event_type == "order.paid"]

    first = svix.message.poller.poll(app.id, "feed", MessagePollerPollOptions(limit=2))
    rest = svix.message.poller.poll(
        app.id, sink.id, MessagePollerPollOptions(iterator=first.iterator)
    )

    assert [m.id for m in first.data] == paid[:2]
    assert first.done is False
    assert [m.id for m in rest.data] == paid[2:]
    assert rest.done is True
    assert rest.data[0].payload == {"n": 5}
    assert rest.data[0].event_type == "order.paid"


def test_poller_consumer_resumes_and_seeks(hookd: HookdPool) -> None:
    svix: Svix = hookd().client()
    app = svix.application.create(ApplicationIn(name="consumer"))
    sink = svix.endpoint.create(app.id, EndpointIn(url="http://127.0.0.1:9/"))
    sent = [
        svix.message.create(app.id, MessageIn(event_type="test.event", payload={"n": n}))
        for n in range(5)
    ]
    options = MessagePollerConsumerPollOptions(limit=3)

    first = svix.message.poller.consumer_poll(app.id, sink.id, "reader", options)
    second = svix.message.poller.consumer_poll(app.id, sink.id, "reader", options)
    seek = svix.message.poller.consumer_seek(
        app.id, sink.id, "reader", PollingEndpointConsumerSeekIn(after=sent[0].timestamp)
    )
    again = svix.message.poller.consumer_poll(app.id, sink.id, "reader", options)

    assert [m.id for m in first.data] == [m.id for m in sent[:3]]
    assert [m.id for m in second.data] == [m.id for m in sent[3:]]
    assert seek.iterator < sent[0].id
    assert [m.id for m in again.data] == [m.id for m in sent[:3]]
