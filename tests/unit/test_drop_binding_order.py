"""dropreason binds a new drop key only after packetparser has handed the chain a newer
table of the veths addresses sit behind (plugins/dropreason.py
``_named_once_behind_known``): pure bookkeeping, no kernel."""

from __future__ import annotations

from typing import Any

from retinad.exporter.ledger import Record
from retinad.plugins.dropreason import OVERFLOW_REASON, _named_once_behind_known, _Program
from retinad.resolvers.base import ResolverChain


def rec(key: bytes, reason: str = "NO_SOCKET") -> Record:
    return Record(key, (reason, "ingress", "", "x", "static", "x"), (1, 100), True)


def program() -> _Program:
    nothing: Any = None
    return _Program(bpf=nothing, reader=nothing, capacity=16, advanced=True)


def keys(records: list[Record]) -> list[bytes]:
    return [r.key for r in records]


def test_without_packetparser_tables_nothing_waits() -> None:
    chain, prog = ResolverChain([]), program()
    assert keys(_named_once_behind_known(prog, [rec(b"a"), rec(b"b")], chain)) == [b"a", b"b"]


def test_a_new_key_waits_for_the_next_table_then_stays_bound() -> None:
    chain, prog = ResolverChain([]), program()
    chain.note_container_addresses({})
    first = [rec(b"a"), rec(b"ovf", OVERFLOW_REASON)]
    assert keys(_named_once_behind_known(prog, first, chain)) == [b"ovf"]
    assert keys(_named_once_behind_known(prog, first, chain)) == [b"ovf"], "same table: waits"
    chain.note_container_addresses({})
    both = [rec(b"a"), rec(b"b"), rec(b"ovf", OVERFLOW_REASON)]
    assert keys(_named_once_behind_known(prog, both, chain)) == [b"a", b"ovf"]
    chain.note_container_addresses({})
    assert keys(_named_once_behind_known(prog, both, chain)) == [b"a", b"b", b"ovf"]


def test_a_key_freed_from_the_map_waits_again_when_it_comes_back() -> None:
    chain, prog = ResolverChain([]), program()
    chain.note_container_addresses({})
    _named_once_behind_known(prog, [rec(b"a")], chain)
    chain.note_container_addresses({})
    assert keys(_named_once_behind_known(prog, [rec(b"a")], chain)) == [b"a"]
    assert _named_once_behind_known(prog, [], chain) == []  # the ledger took it
    assert keys(_named_once_behind_known(prog, [rec(b"a")], chain)) == []
    chain.note_container_addresses({})
    assert keys(_named_once_behind_known(prog, [rec(b"a")], chain)) == [b"a"]
