"""What the server's requests look like on the wire: OpenAI's chat completions (the fields tinyvlm
uses) and moondream's caption and query. Types are strict (a string is never read as a number) and
unknown fields are ignored, as clients send more than a server uses. Ranges that depend on the
server's settings (max_tokens, pictures) are checked by the routes; sampling ranges by `Sampling`."""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

SEED_MAX = 2**63 - 1  # what torch.Generator.manual_seed takes


class Wire(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class ImageURL(Wire):
    url: str = Field(description="a data URL (data:image/png;base64,...) or bare base64; never fetched")
    detail: str | None = None


class TextPart(Wire):
    type: Literal["text"]
    text: str


class ImagePart(Wire):
    type: Literal["image_url"]
    image_url: Union[ImageURL, str]


Part = Annotated[Union[TextPart, ImagePart], Field(discriminator="type")]


class Message(Wire):
    role: Literal["user", "assistant", "system"]
    content: Union[str, list[Part]]


class StreamOptions(Wire):
    include_usage: bool = False


class ChatRequest(Wire):
    messages: list[Message] = Field(min_length=1)
    model: str | None = Field(None, description="ignored: the server serves one model")
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1, description="most tokens to write (default and limit: the server's)")
    max_completion_tokens: int | None = Field(None, ge=1, description="the same as max_tokens (newer clients)")
    temperature: float | None = Field(None, ge=0, le=2, description="0 = greedy (default)")
    top_p: float | None = Field(None, gt=0, le=1, description="1 = off (default)")
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    stop: Union[str, Annotated[list[str], Field(max_length=4)], None] = Field(None, description="up to 4 strings that end the answer (not included)")
    n: Literal[1] = 1


class CaptionRequest(Wire):
    image_url: str = Field(description="a data URL or bare base64; never fetched")
    length: Literal["short", "normal", "long"] = Field("normal", description="normal is long")
    stream: bool = False


class QueryRequest(Wire):
    image_url: str = Field(description="a data URL or bare base64; never fetched")
    question: str = Field(min_length=1)
    stream: bool = False
