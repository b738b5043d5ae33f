"""``python -m bench.stock ARGS``: ``clerk-sync ARGS`` with some of ``clerk_sync.broker``'s hacks
switched back to the stock behaviour of celery and kombu (benchmarks only).

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
  which code path runs (the transport's fetching, the acknowledgement function, the batch size,
  the prefetch multiplier), read from the live objects;
- ``bench.stock: counters ...`` when a process that counted something exits.

Nothing here is imported by clerk-sync; patches live here and nowhere else. They use the public
APIs of celery and kombu and clerk-sync's own names only (``Channel._fetches`` is clerk-sync's
switch): no private name of celery, kombu, billiard or redis-py (``tests/test_layout.py``).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import pkgutil
import sys
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


def say(text: str) -> None:
    print(f"{MARKER} {text}", flush=True)


def _count(name: str, amount: int = 1) -> None:
    # A dict increment under the GIL: the only cost a patched path pays for being watched.
    _counters[name] += amount


# Where the hacks live. The code moves (and hacks go, once measured): each patch finds its target
# by name, ``present()`` says whether it is still there, and a function is replaced wherever
# ``clerk_sync.broker`` bound it.


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
    """(module, function) for each module of ``clerk_sync.broker`` that binds a function of
    clerk-sync's called ``name``."""
    found = []
    for module in _broker_modules():
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


def _has_fetch() -> bool:
    return hasattr(_transport().Channel, "_fetches")


def _has_bulk_ack() -> bool:
    return bool(_bound("acknowledge_all"))


def _has_template() -> bool:
    from clerk_sync.broker.messages import RedisTaskMessages

    return hasattr(RedisTaskMessages, "build") and hasattr(RedisTaskMessages, "build_with_celery")


def _has_batching() -> bool:
    from clerk_sync.broker import batching

    return hasattr(batching, "BatchingTask")


# The patches, one per hack. Each undoes exactly one hack, and leaves the rest shipped.


def _stock_fetch() -> None:
    """kombu receives one message per ``BRPOP`` and records it itself (``QoS.append``): the
    transport's own switch, which it also flips on a Redis older than 6.2."""
    _transport().Channel._fetches = False


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

    # ``settle`` defines it; the batching strategy calls it through its own binding.
    _replace_everywhere("acknowledge_all", acknowledge_all)


def _stock_template() -> None:
    """Every message built by Celery (``as_task_v2``) and kombu (``prepare_message``), as the
    shipped code builds a retry's."""
    from clerk_sync.broker.messages import RedisTaskMessages
    from clerk_sync.core.queue import QueuedEvent

    def build(self: Any, event: QueuedEvent, task_id: str | None = None) -> tuple[str, str]:
        return self.build_with_celery(event, task_id=task_id)  # type: ignore[no-any-return]

    RedisTaskMessages.build = build  # type: ignore[method-assign]


@dataclass(frozen=True)
class Hack:
    name: str
    measure: str
    """What it is meant to improve: "worker" (events/s draining a backlog) or "ingress" (req/s
    under wrk)."""
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


def _owner(function: Any) -> str:
    """ "shipped" for clerk-sync's own code, "stock" for a library's (or a patch of this module)."""
    module = getattr(getattr(function, "__func__", function), "__module__", "") or ""
    return "shipped" if module.startswith("clerk_sync.") else "stock"


def worker_state(app: Any) -> dict[str, Any]:
    """What decides, in this worker's main process, which code path each hack takes ("stock"
    too where the shipped code no longer has the hack)."""
    task = app.tasks.get(APPLY_EVENT_TASK)
    acknowledge = {_owner(function) for _module, function in _bound("acknowledge_all")} or {"stock"}
    return {
        "fetches": getattr(_transport().Channel, "_fetches", "absent"),
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
