"""The metadata watch's retry and list logic against a small scripted HTTP server that speaks the apiserver's
list/watch wire format (the real kubernetes client talks to it). The bed tests cover the real apiserver; these cover
answers the real one gives rarely: ERROR events, empty streams, expired continue tokens; and that the same watch
follows ServiceAccounts (workload identity) by the same rules."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes import client

from graphcred.kube.metawatch import Directory, KnownObjects, MetadataWatch, Seen, backoff
from graphcred.kube.objectwatch import LatestPerKey, ObjectWatch
from graphcred_testbed.bed import wait_for

from .fakes import Answer, FakeApiserver, Handler, failure_status, metadata_list, secret_metadata

WINDOW = 1.0  # seconds over which a retry storm is counted


@pytest.fixture
def serve() -> Iterator[Callable[..., FakeApiserver]]:
    started: list[FakeApiserver] = []

    def start(on_list: Handler, on_watch: Handler) -> FakeApiserver:
        fake = FakeApiserver(on_list, on_watch)
        fake.thread.start()
        started.append(fake)
        return fake

    yield start
    for fake in started:
        fake.server.shutdown()
        fake.server.server_close()


Events = list[tuple[str, str, str, bool]]


def _watch(fake: FakeApiserver, **kwargs: Any) -> tuple[MetadataWatch, Events]:
    events: Events = []
    watch = MetadataWatch(fake.api(), lambda *e: events.append(e), **kwargs)
    return watch.start(), events


def _one_page(_: dict[str, str]) -> Answer:
    return 200, [metadata_list(["a"])]


@pytest.mark.parametrize("watch_answer", [
    pytest.param((200, [{"type": "ERROR", "object": failure_status(500, "InternalError")}]), id="error-event-500"),
    pytest.param((200, [{"type": "ERROR", "object": failure_status(429, "TooManyRequests")}]), id="error-event-429"),
    pytest.param((200, []), id="stream-ends-at-once"),
    pytest.param((500, [failure_status(500, "InternalError")]), id="http-500"),
])
def test_a_watch_that_fails_at_once_again_and_again_backs_off(serve: Callable[..., FakeApiserver],
                                                              watch_answer: Answer) -> None:
    fake = serve(_one_page, lambda _: watch_answer)
    watch, _ = _watch(fake)
    try:
        wait_for(lambda: fake.watches, timeout=5, what="the first watch request")
        time.sleep(WINDOW)  # counting a rate: the window is the measurement
        # backoff 0.25-0.5 s, then 0.5-1 s, 1-2 s, ...: at most 3 attempts in 1 s; a spinning watch makes hundreds
        attempts = len(fake.watches)
        assert attempts <= 4, f"{attempts} watch requests in {WINDOW} s: no backoff"
    finally:
        watch.stop()


def test_a_watch_that_is_always_too_old_backs_off_between_relists(serve: Callable[..., FakeApiserver]) -> None:
    fake = serve(_one_page, lambda _: (200, [{"type": "ERROR", "object": failure_status(410, "Expired")}]))
    watch, _ = _watch(fake)
    try:
        wait_for(lambda: fake.watches, timeout=5, what="the first watch request")
        time.sleep(WINDOW)
        lists = len(fake.lists)
        assert lists <= 4, f"{lists} full lists in {WINDOW} s: no backoff"
    finally:
        watch.stop()


def test_backoff_is_jittered_and_capped() -> None:
    delays = [backoff(n) for n in (1, 1, 1, 1, 1, 1, 1, 1)]
    assert len(set(delays)) > 1, "no jitter: replicas restarted together retry together"
    assert all(0.1 <= d <= 0.5 for d in delays)
    assert all(backoff(n) <= 30.0 for n in range(1, 100))
    assert backoff(20) >= 15.0


def test_an_expired_continue_token_starts_the_list_over(serve: Callable[..., FakeApiserver]) -> None:
    pages = {"": (["a", "b"], "c1"), "c1": (["c", "d"], "c2"), "c2": (["e"], "")}
    expired_once: list[str] = []

    def on_list(query: dict[str, str]) -> Answer:
        token = query.get("continue", "")
        if token == "c2" and not expired_once:
            expired_once.append(token)
            return 410, [failure_status(410, "Expired")]
        names, cont = pages[token]
        return 200, [metadata_list(names, cont=cont)]

    fake = serve(on_list, lambda _: (200, []))
    watch, events = _watch(fake, page_size=2)
    try:
        assert watch.ready.wait(10), "the first list never completed"
        assert [q.get("continue", "") for q in fake.lists] == ["", "c1", "c2", "", "c1", "c2"]
        assert all(q.get("limit") == "2" for q in fake.lists)
        assert sorted({e[1] for e in events}) == ["a", "b", "c", "d", "e"]
        assert not any(e[3] for e in events), "nothing was deleted"
    finally:
        watch.stop()


def test_a_relist_reports_what_changed_and_what_was_deleted_in_the_gap(serve: Callable[..., FakeApiserver]) -> None:
    lists: list[dict[str, Any]] = [metadata_list(["a", "b", "c"], rv="10"),
                                   {"kind": "PartialObjectMetadataList", "metadata": {"resourceVersion": "20"},
                                    "items": [secret_metadata("a", "10"), secret_metadata("c", "15"),
                                              secret_metadata("d", "18")]}]

    def on_list(_: dict[str, str]) -> Answer:
        return 200, [lists[min(len(fake.lists), len(lists)) - 1]]

    def on_watch(_: dict[str, str]) -> Answer:  # the first watch is too old, later ones quiet
        return 200, [{"type": "ERROR", "object": failure_status(410, "Expired")}] if len(fake.watches) == 1 else []

    fake = serve(on_list, on_watch)
    watch, events = _watch(fake)
    try:
        wait_for(lambda: len(fake.lists) >= 2 and len(events) >= 6, timeout=10, what="the relist after 410")
        assert events[:3] == [("ns", "a", "10", False), ("ns", "b", "10", False), ("ns", "c", "10", False)]
        assert sorted(events[3:]) == [("ns", "b", "20", True), ("ns", "c", "15", False), ("ns", "d", "18", False)]
    finally:
        watch.stop()


def test_the_known_secrets_record_is_compact() -> None:
    """(namespace, name) -> resourceVersion for 50,000 Secrets, as the watch keeps it."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    known = KnownObjects()
    for i in range(50_000):
        known.put(f"namespace-{i % 200}", f"some-secret-name-{i}", str(10_000_000 + i))
    size = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert size < 16 * 2**20, f"{size / 2**20:.1f} MiB for 50,000 Secrets"


# --- the same watch over ServiceAccounts (workload identity: an annotation change wakes the credential) ----------
@pytest.mark.parametrize(("namespace", "path"), [(None, "/api/v1/serviceaccounts"),
                                                 ("ns", "/api/v1/namespaces/ns/serviceaccounts")])
def test_a_service_account_watch_lists_and_watches_service_account_metadata(
        serve: Callable[..., FakeApiserver], namespace: str | None, path: str) -> None:
    def on_watch(_: dict[str, str]) -> Answer:
        if len(fake.watches) > 1:
            return 200, []
        return 200, [{"type": "MODIFIED", "object": secret_metadata("reader", "11")},
                     {"type": "DELETED", "object": secret_metadata("a", "12")}]

    fake = serve(_one_page, on_watch)
    events: Events = []
    watch = MetadataWatch(fake.api(), lambda *e: events.append(e), namespace, resource="serviceaccounts").start()
    try:
        wait_for(lambda: len(events) >= 3, timeout=10, what="the list and two watch events")
        assert events[:3] == [("ns", "a", "10", False), ("ns", "reader", "11", False), ("ns", "a", "12", True)]
        assert {p for p, _ in fake.requests} == {path}, fake.requests
        assert all("as=PartialObjectMetadata" in accept for _, accept in fake.requests), "metadata only"
        assert watch._thread.name == f"serviceaccount-watch:{namespace or '*'}"
    finally:
        watch.stop()


def test_the_secret_watch_still_asks_for_secrets(serve: Callable[..., FakeApiserver]) -> None:
    fake = serve(_one_page, lambda _: (200, []))
    watch, _ = _watch(fake)
    try:
        assert watch.ready.wait(10)
        wait_for(lambda: fake.watches, timeout=5, what="the first watch request")
        assert {p for p, _ in fake.requests} == {"/api/v1/secrets"}
    finally:
        watch.stop()


def test_an_unknown_resource_is_refused() -> None:
    with pytest.raises(ValueError, match="configmaps"):
        MetadataWatch(client.ApiClient(), lambda *e: None, resource="configmaps")


def test_the_watch_answers_what_it_has_seen_only_with_a_whole_list(serve: Callable[..., FakeApiserver]) -> None:
    """The reconciler skips reading a Secret the watch has never seen: only once the watch has listed them all (and
    not while it lists again: its record is incomplete then)."""
    second_page, relisting = threading.Event(), threading.Event()
    watches: list[int] = []

    def on_list(query: dict[str, str]) -> Answer:
        if query.get("continue") == "p2":
            second_page.wait(5)
            return 200, [metadata_list(["b"])]
        if len(fake.lists) > 2:  # the list after 410: held until the test looked
            relisting.wait(5)
        return 200, [metadata_list(["a"], cont="p2")]

    def on_watch(_: dict[str, str]) -> Answer:
        watches.append(1)
        if len(watches) == 1:
            return 200, [{"type": "ADDED", "object": secret_metadata("c", "12")},
                         {"type": "DELETED", "object": secret_metadata("a", "13")},
                         {"type": "ERROR", "object": failure_status(410, "Expired")}]
        time.sleep(0.5)
        return 200, []

    fake = serve(on_list, on_watch)
    watch, _ = _watch(fake)
    directory = Directory()
    directory.add(watch)
    try:
        wait_for(lambda: fake.lists, timeout=5, what="the first page")
        assert watch.seen("ns", "a") is None and directory.lookup("ns", "zz") is None, "answered mid-list"
        second_page.set()
        assert watch.ready.wait(5)
        wait_for(lambda: len(fake.lists) >= 3, timeout=5, what="the relist after 410")
        assert directory.lookup("ns", "c") is None, "answered during a relist"
        relisting.set()
        wait_for(lambda: directory.lookup("ns", "b") is not None, timeout=5, what="the relist to end")
        assert directory.lookup("ns", "b") == Seen("10") and directory.lookup("ns", "zz") == Seen(None)
    finally:
        watch.stop()


def test_the_directory_asks_the_watch_of_the_namespace() -> None:
    class Watch:
        def __init__(self, namespace: str | None) -> None:
            self.namespace = namespace

        def seen(self, namespace: str, name: str) -> Seen | None:
            return Seen(f"{self.namespace}:{namespace}/{name}")

    directory = Directory()
    for namespace in ("a", "b"):
        directory.add(Watch(namespace))  # type: ignore[arg-type]
    assert directory.lookup("b", "x") == Seen("b:b/x")
    assert directory.lookup("c", "x") is None, "no watch of that namespace: nothing known"
    everywhere = Directory()
    everywhere.add(Watch(None))  # type: ignore[arg-type]
    assert everywhere.lookup("c", "x") == Seen("None:c/x")


@pytest.mark.parametrize("meanwhile", ["a relist begins", "a whole relist runs"])
def test_a_relist_between_the_check_and_the_lookup_gives_no_answer(meanwhile: str) -> None:
    """The reconciler asks on the event loop while the watch thread may start a list again (a 410): that list
    empties the record as it compares. A lookup that raced it must say "cannot tell", never "absent" for a Secret
    that exists: the pass would skip its read and request a token before finding the Secret on create."""
    watch = MetadataWatch(client.ApiClient(), lambda *e: None)  # not started: the test plays its thread
    fresh = KnownObjects()
    fresh.put("ns", "a", "5")

    class RacedByTheWatchThread(KnownObjects):
        def get(self, namespace: str, name: str) -> str | None:
            # the GIL passed to the watch thread after `seen` checked `_listing` and before this lookup
            watch._listing = True
            self.pop(namespace, name)  # compared against the new list's first page already
            if meanwhile == "a whole relist runs":
                watch._known, watch._listing = fresh, False
            return super().get(namespace, name)

    raced = RacedByTheWatchThread()
    raced.put("ns", "a", "5")
    watch._known, watch._listing = raced, False
    assert watch.seen("ns", "a") in (None, Seen("5")), "a Secret that exists was reported absent"


def test_stop_ends_a_watch_whose_request_was_still_on_its_way() -> None:
    """stop() shuts down the stream it finds; a watch request still waiting for its answer had none to find, and the
    watch then followed the stream it got, blocked until the server's timeout, outliving stop() (found by the
    composition root's lifecycle test: a stop right after the first list took 5 s and left the thread running)."""
    release = threading.Event()
    watch_asked = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            if "watch=true" not in self.path:
                body = json.dumps(metadata_list(["a"])).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            watch_asked.set()
            time.sleep(0.5)  # the answer is on its way when stop() comes
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            release.wait(30)  # an open stream with nothing to say

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    conf = client.Configuration()
    conf.host = f"http://127.0.0.1:{server.server_address[1]}"
    watch = MetadataWatch(client.ApiClient(conf), lambda *e: None).start()
    try:
        assert watch_asked.wait(5), "the watch request"
        started = time.monotonic()
        watch.stop()
        took = time.monotonic() - started
        assert not watch._thread.is_alive(), "the watch thread outlived stop()"
        assert took < 3, f"stop() took {took:.1f} s"
    finally:
        release.set()
        server.shutdown()
        server.server_close()


# --- the same watch over GraphAppCredentials, whole, and Namespaces (kube/objectwatch.py: kopf no longer does) --
def _credential(name: str, rv: str, secret: str = "cred") -> dict[str, Any]:
    return {"apiVersion": "graphcred.io/v1alpha1", "kind": "GraphAppCredential",
            "metadata": {"namespace": "ns", "name": name, "uid": f"uid-{name}", "resourceVersion": rv},
            "spec": {"credential": {"clientSecret": {"name": secret}}}}


def _fed(loop: asyncio.AbstractEventLoop) -> tuple[LatestPerKey, list[tuple[tuple[str, str], Any]]]:
    taken: list[tuple[tuple[str, str], Any]] = []
    return LatestPerKey(loop, lambda key, body: taken.append((key, body))), taken


@pytest.mark.parametrize(("namespace", "path"), [
    (None, "/apis/graphcred.io/v1alpha1/graphappcredentials"),
    ("ns", "/apis/graphcred.io/v1alpha1/namespaces/ns/graphappcredentials")])
def test_the_credential_watch_hands_over_whole_credentials_and_their_deletion(
        serve: Callable[..., FakeApiserver], namespace: str | None, path: str) -> None:
    lists = [{"metadata": {"resourceVersion": "10"}, "items": [_credential("a", "10"), _credential("b", "10")]},
             {"metadata": {"resourceVersion": "20"}, "items": [_credential("a", "10"), _credential("c", "18")]}]

    def on_list(_: dict[str, str]) -> Answer:
        return 200, [lists[min(len(fake.lists), len(lists)) - 1]]

    def on_watch(_: dict[str, str]) -> Answer:  # one change and a deletion, then too old: b deleted in the gap
        if len(fake.watches) == 1:
            return 200, [{"type": "MODIFIED", "object": _credential("a", "11", secret="other")},
                         {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "12"}}},
                         {"type": "ERROR", "object": failure_status(410, "Expired")}]
        return 200, []

    fake = serve(on_list, on_watch)
    loop = asyncio.new_event_loop()
    feed, taken = _fed(loop)
    watch = ObjectWatch.credentials(fake.api(), feed, namespace).start()
    try:
        def arrived(n: int) -> bool:
            loop.run_until_complete(asyncio.sleep(0.01))
            return len(taken) >= n

        def relisted() -> bool:  # events of one credential waiting together are handed over as the newest only
            arrived(0)
            last = {k[1]: b and b["metadata"]["resourceVersion"] for k, b in taken}
            return len(fake.lists) >= 2 and last == {"a": "10", "b": None, "c": "18"}

        # the relist: a back at 10 (changed since 11), b gone while the watch was away, c new
        wait_for(relisted, timeout=10, what="the list, the watch's change and the relist handed over")
        assert all(b is None or b["spec"]["credential"]["clientSecret"]["name"] in ("cred", "other")
                   for _, b in taken), "whole objects"
        assert {p for p, _ in fake.requests} == {path}, fake.requests
        assert all(accept == "application/json" for _, accept in fake.requests), "whole objects"
        # the relist clears its last page as it returns, just after handing it over (in the watch's thread)
        wait_for(lambda: watch._bodies == {}, timeout=5, what="no body kept once it is handed over")
    finally:
        watch.stop()
        loop.close()


def test_a_burst_of_watch_events_waits_as_one_body_per_credential_and_drains_in_turns() -> None:
    """Events coming faster than the loop takes them (an operator start, a relist, many writers) wait as at most one
    body per credential, the newest; the loop takes them a bounded batch a turn, other work in between."""
    loop = asyncio.new_event_loop()
    feed, taken = _fed(loop)
    try:
        def burst() -> None:
            for round_ in range(5):
                for i in range(1000):
                    feed.put(("ns", f"c{i}"), _credential(f"c{i}", str(round_)))
            feed.put(("ns", "c7"), None)  # deleted after its changes: the deletion is what is handed over
            feed.put(("ns", "c8"), None)
            feed.put(("ns", "c8"), _credential("c8", "99"))  # re-created after: the new body

        thread = threading.Thread(target=burst)
        thread.start()
        thread.join()
        assert len(feed) == 1000, "one body waits per credential, not one per event"
        turns: list[int] = []

        async def other_work() -> None:
            while len(taken) < 1000:
                turns.append(len(taken))
                await asyncio.sleep(0)

        loop.run_until_complete(other_work())
        assert len(taken) == 1000 and len(feed) == 0
        assert len({k for k, _ in taken}) == 1000
        bodies = dict(taken)
        assert bodies[("ns", "c7")] is None and bodies[("ns", "c8")]["metadata"]["resourceVersion"] == "99"
        assert all(b["metadata"]["resourceVersion"] == "4" for k, b in taken if k[1] not in ("c7", "c8"))
        assert max(b - a for a, b in itertools.pairwise(turns)) <= 256, "a bounded batch a turn"
    finally:
        loop.close()


def test_one_credential_the_controller_cannot_take_in_costs_the_others_nothing(caplog: pytest.LogCaptureFixture
                                                                               ) -> None:
    loop = asyncio.new_event_loop()
    taken: list[str] = []

    def deliver(key: tuple[str, str], body: Any) -> None:
        if key[1] == "bad":
            raise KeyError("uid")
        taken.append(key[1])

    feed = LatestPerKey(loop, deliver)
    try:
        for name in ("a", "bad", "b"):
            feed.put(("ns", name), _credential(name, "1"))
        loop.run_until_complete(asyncio.sleep(0.01))
        assert taken == ["a", "b"]
        assert "GraphAppCredential ns/bad could not be taken in: KeyError" in caplog.text
    finally:
        loop.close()


def test_the_secret_watch_keeps_the_marks_of_token_secrets_only() -> None:
    """A token Secret's controlling credential and expiry (what a pass after a restart trusts it by), short strings
    only, from a GraphAppCredential controller reference only; nothing else of any Secret's metadata."""
    def meta(name: str, rv: str, *, expires: str | None = "2026-12-06T21:00:00Z", kind: str = "GraphAppCredential",
             api_version: str = "graphcred.io/v1alpha1", uid: str = "u-1", controller: bool = True) -> dict[str, Any]:
        annotations = {"graphcred.io/expires-on": expires, "kubectl.kubernetes.io/last-applied-configuration": "{}"} \
            if expires is not None else {}
        return {"metadata": {"namespace": "ns", "name": name, "resourceVersion": rv, "annotations": annotations,
                             "ownerReferences": [{"apiVersion": api_version, "kind": kind, "name": "a", "uid": uid,
                                                  "controller": controller}]}}

    watch = MetadataWatch(client.ApiClient(), lambda *e: None)
    watch._known.put("ns", "x", "1")
    watch._listing = False
    for event in ({"type": "ADDED", "object": meta("token", "2")},
                  {"type": "ADDED", "object": meta("plain", "3", expires=None)},
                  {"type": "ADDED", "object": meta("long", "4", expires="x" * 65)},
                  {"type": "ADDED", "object": meta("forged", "5", kind="Deployment")},
                  {"type": "ADDED", "object": meta("other-group", "6", api_version="evil.io/v1")},
                  {"type": "ADDED", "object": meta("not-controller", "7", controller=False)}):
        watch._event(event)
    assert watch.seen("ns", "token") == Seen("2", "u-1", "2026-12-06T21:00:00Z")
    for name, rv in (("plain", "3"), ("long", "4"), ("forged", "5"), ("other-group", "6"), ("not-controller", "7")):
        assert watch.seen("ns", name) == Seen(rv), name
    watch._event({"type": "MODIFIED", "object": meta("token", "8", expires=None)})  # no longer graphcred's
    assert watch.seen("ns", "token") == Seen("8")
    watch._event({"type": "MODIFIED", "object": meta("token", "9")})
    watch._event({"type": "DELETED", "object": meta("token", "10")})
    assert watch.seen("ns", "token") == Seen(None)
    assert all(isinstance(v, str) for v in watch._known._versions.values()), "marks of plain Secrets only"


def test_the_namespace_watch_hands_over_each_namespace_s_labels_as_metadata(serve: Callable[..., FakeApiserver]
                                                                            ) -> None:
    def namespace(name: str, rv: str, team: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "resourceVersion": rv, "labels": {"team": team}}}

    def on_list(_: dict[str, str]) -> Answer:
        return 200, [{"metadata": {"resourceVersion": "10"}, "items": [namespace("a", "10", "x")]}]

    def on_watch(_: dict[str, str]) -> Answer:  # other namespaces than the listed one: nothing is coalesced
        if len(fake.watches) > 1:
            return 200, []
        return 200, [{"type": "ADDED", "object": namespace("b", "11", "y")},
                     {"type": "DELETED", "object": namespace("c", "12", "z")}]

    fake = serve(on_list, on_watch)
    loop = asyncio.new_event_loop()
    feed, taken = _fed(loop)
    watch = ObjectWatch.namespaces(fake.api(), feed).start()
    try:
        def arrived() -> bool:
            loop.run_until_complete(asyncio.sleep(0.01))
            return len(taken) >= 3

        wait_for(arrived, timeout=10, what="the list and the watch's events")
        labels = {key: body["metadata"]["labels"]["team"] if body else None for key, body in taken}
        assert labels == {("", "a"): "x", ("", "b"): "y", ("", "c"): None}
        assert {p for p, _ in fake.requests} == {"/api/v1/namespaces"}
        assert all("as=PartialObjectMetadata" in accept for _, accept in fake.requests), "metadata only"
    finally:
        watch.stop()
        loop.close()


def test_a_closed_feed_hands_nothing_more_to_the_loop() -> None:
    """Review: a burst still draining (or a late event of a watch thread) after the stop started workers on a
    controller that had stopped. The stop closes the feeds: what waits is dropped, later events ignored."""
    loop = asyncio.new_event_loop()
    feed, taken = _fed(loop)
    try:
        for i in range(600):  # handed over, not taken yet (the loop is busy elsewhere)
            feed.put(("ns", f"c{i}"), _credential(f"c{i}", "1"))
        feed.close()
        feed.put(("ns", "late"), _credential("late", "1"))
        loop.run_until_complete(asyncio.sleep(0.05))
        assert taken == [] and len(feed) == 0
    finally:
        loop.close()
