"""`type: jsonl`: appends every call as one line of Segment-spec JSON to a file, for piping elsewhere."""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field

from engage.connector import Connector, Delivery


class JsonlOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="the file to append to, relative to the project root")
    batch_size: int = Field(default=1000, gt=0)


class JsonlConnector(Connector):
    name = "jsonl"
    Options = JsonlOptions

    def deliver(self, delivery: Delivery) -> int:
        assert isinstance(self.options, JsonlOptions)
        path = self.space.resolve(self.options.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        with path.open("a", encoding="utf-8") as sink:
            for batch in delivery.payloads(self.options.batch_size):
                sink.write("".join(json.dumps(payload, sort_keys=True) + "\n" for payload in batch))
                written += len(batch)
        return written
