"""A unit of batch work on the stream: route a range of lines, run one expert's lines, or
aggregate lines whose experts have all answered."""

from __future__ import annotations

from dataclasses import dataclass

from coe.batch.status import Phase


@dataclass(frozen=True)
class Unit:
    job_id: str
    phase: Phase
    start: int = 0
    end: int = 0
    expert: str = ""
    items: tuple[int, ...] = ()

    @property
    def key(self) -> str:
        """Names a run unit within its job (its expert and first line)."""
        return f"{self.expert}:{self.items[0] if self.items else self.start}"

    @property
    def label(self) -> str:
        """The unit in words, for logs and error messages."""
        if self.phase == "route":
            return f"route unit (lines {self.start}-{self.end - 1})"
        first = self.items[0] if self.items else 0
        what = f"{self.expert} " if self.phase == "run" else ""
        return f"{self.phase} unit ({what}{len(self.items)} lines from line {first})"

    def fields(self) -> dict[str, str]:
        return {
            "job": self.job_id,
            "phase": self.phase,
            "start": str(self.start),
            "end": str(self.end),
            "expert": self.expert,
            "items": ",".join(map(str, self.items)),
        }

    @classmethod
    def parse(cls, fields: dict[str, str]) -> Unit:
        try:
            phase = Phase(fields["phase"])
        except ValueError:
            raise ValueError(f"unknown batch unit phase {fields['phase']!r}") from None
        return cls(
            job_id=fields["job"],
            phase=phase,
            start=int(fields["start"]),
            end=int(fields["end"]),
            expert=fields.get("expert", ""),
            items=tuple(int(i) for i in fields.get("items", "").split(",") if i),
        )
