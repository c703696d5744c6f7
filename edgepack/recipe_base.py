"""The base of every recipe model: frozen, unknown fields refused (a typo names its field)."""

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)
