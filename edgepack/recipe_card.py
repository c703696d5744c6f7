"""Recipe surface of `card:` (the model card's hand-written parts; edgepack/model_card.py fills in the rest)."""


from pydantic import BaseModel, ConfigDict, Field


class Card(BaseModel):
    """What a person has to say about the model: MODEL_CARD.md sections and the OCI annotations on publish."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    summary: str | None = Field(None, max_length=1000, description="One or two sentences: what the model does. "
                                "MODEL_CARD.md's opening line and the OCI image description (default: generated from the build).")
    intended_use: str | None = Field(None, description="Who should use it for what (Markdown).")
    limitations: str | None = Field(None, description="Known failure modes, out-of-scope uses, biases (Markdown).")
    training_data: str | None = Field(None, description="What the model was trained on (Markdown).")
    license: str | None = Field(None, max_length=200, description="SPDX license expression of the model (e.g. apache-2.0); the OCI licenses annotation.")
    authors: list[str] = Field(default_factory=list, description="People or teams responsible for the model.")
    url: str | None = Field(None, max_length=2000, description="Where to find more about the model (homepage, source).")
    tags: list[str] = Field(default_factory=list, description="Free-form tags for the card's front matter.")
