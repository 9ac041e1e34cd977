"""Who may publish to and subscribe to a topic (``CONVEYOR_SHARED_TOPICS``).

By default every topic is private to its owner: owner A's ``alerts`` and owner B's ``alerts`` are two
topics, and neither owner can see the other's. A shared topic is one namespace for every owner; a rule names
who may publish to it and who may subscribe. The setting is a comma-separated list of
``pattern:publishers[:subscribers]`` (shell-style patterns, owners separated by ``|``, ``*`` for any owner;
subscribers default to any), e.g. ``news.*:admin,chat.*:*`` — only ``admin`` publishes ``news.*``, which
everyone reads; anyone publishes and reads ``chat.*``. The first matching rule wins.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

ANY = "*"


@dataclass(frozen=True)
class Rule:
    pattern: str
    publishers: frozenset[str]
    subscribers: frozenset[str]

    def allows(self, owners: frozenset[str], owner: str | None) -> bool:
        return ANY in owners or (owner is not None and owner in owners)


class TopicPolicy:
    """The parsed setting. ``key()`` is the name events of a topic travel under inside Conveyor."""

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules

    @classmethod
    def parse(cls, text: str) -> TopicPolicy:
        """Parse ``CONVEYOR_SHARED_TOPICS``; raises ``ValueError`` naming a malformed item."""
        rules = []
        for item in filter(None, (part.strip() for part in text.split(","))):
            fields = item.split(":")
            if len(fields) not in (2, 3) or not all(field.strip() for field in fields):
                raise ValueError(f"shared topic rule {item!r} is not pattern:publishers[:subscribers]")
            pattern, publishers, subscribers = (*fields, ANY) if len(fields) == 2 else fields
            rules.append(Rule(pattern.strip(), _owners(publishers), _owners(subscribers)))
        return cls(rules)

    def rule(self, topic: str) -> Rule | None:
        """The shared-topic rule for ``topic``, or ``None`` when the topic is private to each owner."""
        for rule in self.rules:
            if fnmatch.fnmatchcase(topic, rule.pattern):
                return rule
        return None

    def key(self, owner: str | None, topic: str) -> str:
        """Where ``owner``'s events on ``topic`` are routed: one namespace for all when the topic is shared,
        else the owner's own. Owner names are never ``*`` and never contain ``/``, so keys cannot collide."""
        return f"{ANY}/{topic}" if self.rule(topic) is not None else f"{owner or ''}/{topic}"

    def may_publish(self, owner: str | None, topic: str) -> bool:
        rule = self.rule(topic)
        return rule is None or rule.allows(rule.publishers, owner)

    def may_subscribe(self, owner: str | None, topic: str) -> bool:
        rule = self.rule(topic)
        return rule is None or rule.allows(rule.subscribers, owner)


def _owners(text: str) -> frozenset[str]:
    return frozenset(owner.strip() for owner in text.split("|") if owner.strip())
