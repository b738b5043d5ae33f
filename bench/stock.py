"""``python -m bench.stock ARGS``: ``clerk-sync ARGS`` with some of ``clerk_sync.broker``'s hacks
switched back to the stock behaviour of celery, kombu and redis-py (benchmarks only).

``clerk_sync.broker`` is where clerk-sync uses private internals of those libraries for speed.
The ``hacks`` benchmark (``bench.hacks_bench``) measures what each one buys: it runs the shipped
code and, next to it, variants in which one hack is undone. This launcher undoes them:

    CLERK_SYNC_BENCH_STOCK=fetch,bulk-ack python -m bench.stock worker --concurrency 2

patches the classes and functions of ``clerk_sync.broker`` named by ``HACKS`` in this process,
then runs ``clerk_sync.cli.main()`` exactly as ``python -m clerk_sync`` does. Pool processes
(Celery's prefork pool, gunicorn's workers) fork from this process and inherit the patches. With
the variable empty it patches nothing: the shipped code, through the same launcher.

A hack that is no longer in the shipped code (measured, found wanting, removed) is not
``present()``: the benchmark skips it, and the launcher refuses to patch it.

What it prints (to the process's log, for the harness to check that a patch took effect):

- ``bench.stock: applied ...`` when it starts;
- in a worker, ``bench.stock: worker state ...`` once the worker is ready: the state that decides
  which code path runs (the transport's fetching, decoding, the batch size, the acknowledgement
  function, ...), read from the live objects;
- ``bench.stock: counters ...`` when a process that counted something exits, and one line the
  first time a patched path runs in a process where that is worth a word (``kernel-timeouts``).

Nothing here is imported by clerk-sync; patches live here and nowhere else.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import pkgutil
import sys
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

ENV: Final = "CLERK_SYNC_BENCH_STOCK"
"""Comma-separated names of the hacks to switch back to stock."""
MARKER: Final = "bench.stock:"
MODULE: Final = "bench.stock"
APPLY_EVENT_TASK: Final = "clerk_sync.apply_event"

_counters: Counter[str] = Counter()
_said: set[str] = set()
_lock = threading.Lock()


def say(text: str) -> None:
    print(f"{MARKER} {text}", flush=True)


def _count(name: str, amount: int = 1) -> None:
    # A dict increment under the GIL: the only cost a patched path pays for being watched.
    _counters[name] += amount


def _say_once(key: str, text: str) -> None:
    with _lock:
        if key in _said:
            return
        _said.add(key)
    say(text)


# Where the hacks live. The code moves (and hacks go, once measured): each patch finds its target
# by name, ``present()`` says whether it is still there, and a function is replaced wherever
# ``clerk_sync.broker`` or ``workers`` bound it.


def _transport() -> Any:
    from clerk_sync.broker import transport

    return transport


def _broker_modules() -> list[Any]:
    """Every module of ``clerk_sync.broker``, imported."""
    import clerk_sync.broker as package

    return [
        importlib.import_module(f"{package.__name__}.{info.name}")
        for info in pkgutil.iter_modules(package.__path__)
        if info.name != "stock"  # the package's own stock variants are not shipped code
    ]


def _bound(name: str) -> list[tuple[Any, Any]]:
    """(module, function) for each module of ``clerk_sync.broker``, and of ``workers`` already
    imported, that binds a function of clerk-sync's called ``name``."""
    modules = _broker_modules()
    modules += [
        module
        for module_name, module in sorted(sys.modules.items())
        if module_name.startswith("workers.") and module is not None
    ]
    found = []
    for module in modules:
        function = vars(module).get(name)
        if callable(function) and getattr(function, "__module__", "").startswith("clerk_sync."):
            found.append((module, function))
    return found


def _replace_everywhere(name: str, replacement: Callable[..., Any]) -> None:
    bound = _bound(name)
    if not bound:
        raise SystemExit(f"{MARKER} no function {name} in clerk_sync.broker: nothing to patch")
    for module, _function in bound:
        setattr(module, name, replacement)


def _message_class() -> Any:
    """The transport's own message class, if it still has one that decodes."""
    message = vars(_transport()).get("Message")
    return message if message is not None and "_decode" in vars(message) else None


def _has_fetch() -> bool:
    return hasattr(_transport().Channel, "_fetches")


def _has_deferred_record() -> bool:
    return hasattr(_transport().QoS, "take_deferred")


def _has_client_cache() -> bool:
    return "_create_client" in vars(_transport().Channel)


def _has_decode() -> bool:
    return _message_class() is not None or bool(_bound("read_broker_json_fast"))


def _has_bulk_ack() -> bool:
    return bool(_bound("acknowledge_all"))


def _has_template() -> bool:
    from clerk_sync.broker.messages import RedisTaskMessages

    return hasattr(RedisTaskMessages, "build") and hasattr(RedisTaskMessages, "build_with_celery")


def _has_kernel_timeouts() -> bool:
    from clerk_sync.broker.messages import ThreadConnections

    return hasattr(ThreadConnections, "_block_with_kernel_timeouts")


def _has_batching() -> bool:
    from clerk_sync.broker import batching

    return hasattr(batching, "BatchingTask")


# The patches, one per hack. Each undoes exactly one hack, and leaves the rest shipped.


def _stock_fetch() -> None:
    """kombu receives one message per ``BRPOP`` and records it itself (``QoS.append``): the
    transport's own switch, which it also flips on a Redis older than 6.2."""
    _transport().Channel._fetches = False


def _stock_deferred_record() -> None:
    """Fetching stays, but the ``BRPOP``'s own message is recorded as kombu records it, in a
    round trip of its own: ``QoS.deferring`` reads False whatever ``_brpop_read`` sets, so
    ``QoS.append`` goes through kombu's ``append`` and the fetch script gets no record to add."""
    qos = _transport().QoS

    def never(_qos: Any) -> bool:
        return False

    def refuse(_qos: Any, value: bool) -> None:
        if value:
            _count("deferrals refused (BRPOP messages recorded by kombu)")

    qos.deferring = property(never, refuse)


def _stock_client_cache() -> None:
    """kombu's ``_create_client``: a new ``redis.Redis`` for every synchronous command. The fetch
    script is registered once per channel, as the shipped method does on its cached client (it
    is called with an explicit client, so any client of the pool runs it)."""
    from kombu.transport import redis as kombu_redis

    transport = _transport()

    def _create_client(self: Any, asynchronous: bool = False) -> Any:
        client = kombu_redis.Channel._create_client(self, asynchronous=asynchronous)
        if not asynchronous:
            _count("synchronous redis clients created")
            if getattr(self, "_fetch_script", None) is None:
                self._fetch_script = client.register_script(transport.FETCH_SCRIPT)
        return client

    transport.Channel._create_client = _create_client


def _skip_json_registration() -> None:
    """Stock: kombu's serializer registry keeps its own ``json`` decoder."""


def _stock_decode() -> None:
    """kombu's ``Message._decode`` (through its serializer registry), and the registry's stock
    JSON decoder: the worker's ``worker_init`` handler registers nothing."""
    from kombu.transport import virtual

    message = _message_class()
    if message is not None:
        message._decode = virtual.Message._decode
    # workers.app binds the name when it is imported; its signal handler looks it up there.
    importlib.import_module("workers.app")
    if _bound("read_broker_json_fast"):
        _replace_everywhere("read_broker_json_fast", _skip_json_registration)


def _stock_bulk_ack() -> None:
    """Each message acknowledged by Celery's ``Request.acknowledge`` (kombu's ``Message.ack``:
    one ``ZREM`` + ``HDEL`` pipeline per message), and the ledger entries forgotten on their own:
    the fallback branch of ``acknowledge_all``, always."""
    from clerk_sync.core.queue import BROKER_ERRORS

    def acknowledge_all(
        requests: Sequence[Any], *, forget: Sequence[str] = (), ledger: Any = None
    ) -> None:
        for request in requests:
            if not request.acknowledged:
                _count("messages acknowledged one by one")
                request.acknowledge()
        if ledger is not None and forget:
            # As the shipped fallback: if Redis is unreachable, the sweeper drops them later.
            with contextlib.suppress(BROKER_ERRORS):
                ledger.forget(forget)

    # Imported for its binding of the name: the strategy calls it from there.
    importlib.import_module("workers.app")
    _replace_everywhere("acknowledge_all", acknowledge_all)


def _stock_template() -> None:
    """Every message built by Celery (``as_task_v2``) and kombu (``prepare_message``), as the
    shipped code builds a retry's."""
    from clerk_sync.broker.messages import RedisTaskMessages
    from clerk_sync.core.queue import QueuedEvent

    def build(self: Any, event: QueuedEvent, task_id: str | None = None) -> tuple[str, str]:
        return self.build_with_celery(event, task_id=task_id)  # type: ignore[no-any-return]

    RedisTaskMessages.build = build  # type: ignore[method-assign]


def _stock_kernel_timeouts() -> None:
    """The accept connection keeps redis-py's Python-level socket timeout (the connect callback
    changes nothing; it only says, once per process, what the socket's timeout is)."""
    from clerk_sync.broker.messages import ThreadConnections

    def keep_python_timeout(_self: Any, connection: Any) -> None:
        _say_once(
            "kernel-timeouts",
            f"kernel-timeouts: pid {os.getpid()} accept connection keeps redis-py's socket "
            f"timeout (sock.gettimeout() = {connection._sock.gettimeout()})",
        )

    ThreadConnections._block_with_kernel_timeouts = keep_python_timeout  # type: ignore[method-assign]


@dataclass(frozen=True)
class Hack:
    name: str
    measure: str
    """What it is meant to improve: "worker" (events/s draining a backlog), "ingress" (req/s
    under wrk) or "e2e" (end-to-end p50 at a steady low rate)."""
    shipped: str
    stock: str
    present: Callable[[], bool]
    """Whether the shipped code still has this hack."""
    patch: Callable[[], None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    """Settings of the stock variant (``batching`` is switched off by one)."""
    expect: tuple[str, ...] = ()
    """``key=value`` items the worker's state line must show with this hack switched back."""


HACKS: Final[dict[str, Hack]] = {
    hack.name: hack
    for hack in (
        Hack(
            "fetch",
            "worker",
            "after each BRPOP, a Lua script pops and records up to 100 more messages",
            "`Channel._fetches = False`: one message per BRPOP, recorded by kombu",
            _has_fetch,
            _stock_fetch,
            expect=("fetches=False",),
        ),
        Hack(
            "deferred-record",
            "e2e",
            "the BRPOP's message is recorded in the fetch script's round trip",
            "`QoS.deferring` always False: kombu's `QoS.append` records it in its own round trip",
            _has_deferred_record,
            _stock_deferred_record,
            expect=("deferring=stock",),
        ),
        Hack(
            "client-cache",
            "worker",
            "one synchronous redis client per channel",
            "kombu's `_create_client`: a new client per command (fetch script still registered)",
            _has_client_cache,
            _stock_client_cache,
            expect=("create_client=stock",),
        ),
        Hack(
            "decode",
            "worker",
            "`Message._decode` and kombu's registry read JSON with orjson (`read_json`)",
            "kombu's `Message._decode`, and no `read_broker_json_fast` registration",
            _has_decode,
            _stock_decode,
            expect=("decode=stock", "json_decoder=kombu.utils.json.loads"),
        ),
        Hack(
            "bulk-ack",
            "worker",
            "a batch acknowledged (and its ledger entries dropped) in one ZREM+HDEL pipeline",
            "`Request.acknowledge()` per message, ledger forgotten separately",
            _has_bulk_ack,
            _stock_bulk_ack,
            expect=("acknowledge_all=stock",),
        ),
        Hack(
            "template",
            "ingress",
            "messages formatted from a per-process template",
            "every message built by `build_with_celery` (`as_task_v2` + `prepare_message`)",
            _has_template,
            _stock_template,
        ),
        Hack(
            "kernel-timeouts",
            "ingress",
            "blocking accept socket bounded by SO_SNDTIMEO/SO_RCVTIMEO",
            "redis-py's Python-level socket timeout (a `poll` before each send and recv)",
            _has_kernel_timeouts,
            _stock_kernel_timeouts,
        ),
        Hack(
            "batching",
            "worker",
            "BatchingTask/Batcher: up to 100 events per pool task and transaction",
            "`CLERK_SYNC_BATCH_SIZE=1`: one Celery task per event, Celery's default strategy",
            _has_batching,
            env={"CLERK_SYNC_BATCH_SIZE": "1"},
            expect=("batch_size=1", "prefetch_multiplier=1"),
        ),
    )
}


def present(name: str) -> bool:
    """Whether hack ``name`` is in the shipped code (as this process imported it)."""
    try:
        return bool(HACKS[name].present())
    except (ImportError, AttributeError):
        return False


def parse(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in HACKS]
    if unknown:
        raise SystemExit(f"{ENV}: unknown hack(s) {unknown}; known: {', '.join(HACKS)}")
    return names


def variant_env(names: Sequence[str]) -> dict[str, str]:
    """The environment a process of this variant needs on top of the benchmark's."""
    env = {ENV: ",".join(names)}
    for name in names:
        env.update(HACKS[name].env)
    return env


def _qualified(function: Any) -> str:
    function = getattr(function, "__func__", function)
    return f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', '?')}"


def _owner(function: Any) -> str:
    """ "shipped" for clerk-sync's own code, "stock" for a library's (or a patch of this module)."""
    module = getattr(getattr(function, "__func__", function), "__module__", "") or ""
    return "shipped" if module.startswith("clerk_sync.") else "stock"


def worker_state(app: Any) -> dict[str, Any]:
    """What decides, in this worker's main process, which code path each hack takes ("stock"
    too where the shipped code no longer has the hack)."""
    from kombu import serialization

    transport = _transport()
    task = app.tasks.get(APPLY_EVENT_TASK)
    decoder = serialization.registry._decoders.get("application/json")
    message = vars(transport).get("Message")
    acknowledge = {_owner(function) for _module, function in _bound("acknowledge_all")} or {"stock"}
    return {
        "fetches": getattr(transport.Channel, "_fetches", "absent"),
        "deferring": (
            "stock"
            if not _has_deferred_record()
            or isinstance(vars(transport.QoS).get("deferring"), property)
            else "shipped"
        ),
        "create_client": _owner(vars(transport.Channel).get("_create_client")),
        "decode": _owner(vars(message).get("_decode") if message is not None else None),
        "json_decoder": _qualified(decoder),
        "acknowledge_all": "/".join(sorted(acknowledge)),
        "batch_size": getattr(task, "batch_size", None),
        "prefetch_multiplier": app.conf.worker_prefetch_multiplier,
    }


def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    app = getattr(sender, "app", None)
    if app is None:
        return
    state = worker_state(app)
    say("worker state " + " ".join(f"{key}={value}" for key, value in state.items()))


def _say_counters() -> None:
    if _counters:
        counted = ", ".join(f"{name}: {count}" for name, count in sorted(_counters.items()))
        say(f"counters pid {os.getpid()}: {counted}")


def main() -> None:
    names = parse(os.environ.get(ENV, ""))
    for name in names:
        if not present(name):
            raise SystemExit(f"{MARKER} {name} is not in the shipped code: nothing to switch back")
        patch = HACKS[name].patch
        if patch is not None:
            patch()
    say(
        "applied "
        + (", ".join(f"stock {name}" for name in names) if names else "nothing (shipped code)")
        + f" in pid {os.getpid()}"
    )
    from celery import signals

    signals.worker_ready.connect(_on_worker_ready, weak=False, dispatch_uid="bench.stock.ready")
    atexit.register(_say_counters)

    from clerk_sync.cli import main as clerk_sync_main

    clerk_sync_main(prog_name="clerk-sync")


if __name__ == "__main__":
    sys.exit(main())
