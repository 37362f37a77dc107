"""One broken rule of the stack config: the key it is reported on and the rule; and
the top-level keys that 'hosts' or 'models' replace, which both report alike."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Set
from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    """A broken rule: the key it is reported on, the rule, and every key it involves.

    The loader leaves out a rule that involves a key which is itself invalid:
    its check ran against that key's default, not what the user wrote.
    """

    key: str
    rule: str
    involves: frozenset[str]
    secret_check: str = ""
    """For a rule that compares the *values* of the keys it involves (the secret
    `key` and another): what it checks, in positive words, `key` as "it". A check
    without the Pulumi CLI holds only a stand-in for an encrypted value, so the
    rule's verdict there says nothing when any of those keys is encrypted; the
    loader reports it as unverified instead, and `pulumi up` runs it on the values."""


def rule(key: str, rule: str, *others: str, secret_check: str = "") -> Rule:
    return Rule(key, rule, frozenset({key.split(".")[0], *others}), secret_check)


def replaced_keys(
    said: Set[str], keys: Mapping[str, tuple[str, str]], by: str, each: str
) -> Iterator[Rule]:
    """Keys of `keys` (field: key, the key of `by` entries that says it) that are `said`
    although `by` ('hosts', 'models') replaces them."""
    for field, (key, own) in keys.items():
        if field in said:
            yield rule(
                key, f"must not be set with '{by}': {each} says its own ('{by}[i].{own}')", by
            )
