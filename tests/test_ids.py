"""Message ids: unique, ordered within a process (index locality), apart after a fork."""

from __future__ import annotations

import itertools
import os
import re

from smsbot.store.columns import new_id, new_token


def test_ids_follow_each_other_and_never_repeat() -> None:
    ids = [new_id() for _ in range(10_000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)
    firsts = [int(i[:16], 16) for i in ids]
    # one after another, but where a 64-bit counter wraps
    steps = {(b - a) % 2**64 for a, b in itertools.pairwise(firsts)}
    assert steps == {1}
    assert len({i[16:] for i in ids}) == len(ids)  # the random half


def test_tokens_are_random() -> None:
    tokens = [new_token() for _ in range(1_000)]
    assert all(re.fullmatch(r"[0-9a-f]{16}", t) for t in tokens)
    assert len(set(tokens)) == len(tokens)
    assert len({t[:8] for t in tokens}) > 900  # not a counter


def test_a_forked_child_starts_its_own_sequence() -> None:
    new_id()  # the parent has drawn random bytes and counted
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.write(write, new_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    mine = new_id()
    assert child != mine
    assert abs(int(child[:16], 16) - int(mine[:16], 16)) > 1_000_000  # not the parent's count
