"""A token bucket with the clock passed in, so it is pure and testable.

Guests are untrusted: each domain's queries draw from its own bucket, so a guest
that floods its query node is refused (``error EBUSY``) without slowing any other
domain or the daemon's xenstore connection more than the refusals cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; starts full."""

    rate: float
    burst: int
    _tokens: float = field(init=False)
    _stamp: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("a token bucket needs a positive rate and a burst of at least 1")
        self._tokens = float(self.burst)

    def take(self, now: float) -> bool:
        """Spend one token at time ``now`` (seconds, monotonic); False if none is left."""
        if self._stamp is not None and now > self._stamp:
            self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
        if self._stamp is None or now > self._stamp:
            self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
