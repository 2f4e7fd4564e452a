"""The base of every model read from a file someone wrote."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A pydantic model that rejects unknown keys: a typo in a YAML file is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid")
