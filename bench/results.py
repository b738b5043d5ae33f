"""What a benchmark reports: measures over repeats, ratios to a same-run baseline, checks."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Better = Literal["higher", "lower"]


def percentile(values: Sequence[float], fraction: float) -> float:
    """Linear-interpolated percentile (``fraction`` in [0, 1]) of ``values``."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = math.floor(position)
    high = math.ceil(position)
    if low == high:
        return ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class Measure:
    """One quantity measured once per repeat."""

    label: str
    unit: str
    values: list[float] = field(default_factory=list)
    better: Better = "higher"

    def add(self, value: float) -> None:
        self.values.append(float(value))

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else math.nan

    @property
    def low(self) -> float:
        return min(self.values) if self.values else math.nan

    @property
    def high(self) -> float:
        return max(self.values) if self.values else math.nan

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "unit": self.unit,
            "values": self.values,
            "median": self.median,
            "min": self.low,
            "max": self.high,
            "repeats": len(self.values),
        }


@dataclass
class Ratio:
    """``subject`` over ``baseline`` (medians), with the spread of the per-repeat ratios."""

    name: str
    subject: Measure
    baseline: Measure
    target: str | None = None
    """e.g. ``>= 0.5``; None: reported, no target."""
    verdict: str | None = None
    """What the report says of a ratio without a target, instead of "(reported)"."""

    @property
    def value(self) -> float:
        if not self.baseline.values or not self.subject.values or self.baseline.median == 0:
            return math.nan
        return self.subject.median / self.baseline.median

    @property
    def per_repeat(self) -> list[float]:
        """Ratios of the runs paired by repeat (they ran next to each other); empty when the
        two were not repeated alike."""
        if len(self.subject.values) != len(self.baseline.values):
            return []
        return [
            subject / baseline
            for subject, baseline in zip(self.subject.values, self.baseline.values, strict=True)
            if baseline
        ]

    @property
    def spread(self) -> tuple[float, float]:
        """Lowest and highest per-repeat ratio; unpaired, the extremes of the two measures."""
        paired = self.per_repeat
        if paired:
            return min(paired), max(paired)
        if not self.subject.values or not self.baseline.values or not self.baseline.low:
            return math.nan, math.nan
        return self.subject.low / self.baseline.high, self.subject.high / self.baseline.low

    @property
    def met(self) -> bool | None:
        if self.target is None or math.isnan(self.value):
            return None
        operator, threshold = self.target.split()
        if operator == ">=":
            return self.value >= float(threshold)
        if operator == "<=":
            return self.value <= float(threshold)
        raise ValueError(f"unknown target {self.target!r}")

    def as_dict(self) -> dict[str, Any]:
        low, high = self.spread
        return {
            "name": self.name,
            "subject": self.subject.label,
            "baseline": self.baseline.label,
            "value": self.value,
            "per_repeat": self.per_repeat,
            "min": low,
            "max": high,
            "target": self.target,
            "met": self.met,
            "verdict": self.verdict,
        }


@dataclass
class Check:
    """A pass/fail fact that is not a ratio (e.g. nothing lost)."""

    name: str
    value: str
    target: str
    met: bool

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "target": self.target, "met": self.met}


@dataclass
class BenchResult:
    name: str
    title: str
    description: str
    measures: list[Measure] = field(default_factory=list)
    ratios: list[Ratio] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    def measure(self, label: str, unit: str, better: Better = "higher") -> Measure:
        created = Measure(label, unit, better=better)
        self.measures.append(created)
        return created

    @property
    def met(self) -> bool | None:
        """All targets met (None when there is none and nothing failed)."""
        if self.error is not None:
            return False
        verdicts = [ratio.met for ratio in self.ratios if ratio.met is not None]
        verdicts += [check.met for check in self.checks]
        return all(verdicts) if verdicts else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "seconds": round(self.seconds, 1),
            "error": self.error,
            "met": self.met,
            "measures": [measure.as_dict() for measure in self.measures],
            "ratios": [ratio.as_dict() for ratio in self.ratios],
            "checks": [check.as_dict() for check in self.checks],
            "notes": self.notes,
            "details": self.details,
        }
