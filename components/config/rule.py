"""One broken rule of the stack config: the key it is reported on and the rule."""

from __future__ import annotations

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
