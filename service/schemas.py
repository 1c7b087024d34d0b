"""Request schemas of both protocols and the one rule for seeds (pydantic validates them all)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter, ValidationError, model_validator

from .errors import ServiceError

MAX_SEED = 2**63 - 1
Seed = Annotated[int, Field(ge=0, le=MAX_SEED, description="same seed, same responses")]
_SEED = TypeAdapter(Seed | None)
Output = Literal["responses", "channels", "both"]


def check_seed(value, where: str) -> int | None:
    """The seed of any route (JSON field, query parameter, OIP input), or 422 naming `where`."""
    try:
        return _SEED.validate_python(value)
    except ValidationError:
        raise ServiceError(422, f"{where}: seed {value!r}; expected an integer from 0 to {MAX_SEED}") from None


class SimulateRequest(BaseModel, extra="forbid"):
    """Particles as rows of the 9 features (energy GeV, vx vy vz m, px py pz GeV, mass MeV, charge e),
    or as named columns of equal length."""

    particles: list[list[float]] | None = Field(None, description="N rows of 9 features")
    columns: dict[str, list[float]] | None = Field(None, description="the 9 features by name, equal lengths")
    seed: Seed | None = None
    output: Output = "both"
    extrapolate: bool = Field(False, description="simulate particles outside the model's trained feature ranges")
    timeout_ms: float | None = Field(None, gt=0, allow_inf_nan=False,
                                     description="drop the request unsimulated (504) if it waits longer in the queue")

    @model_validator(mode="after")
    def _one_input(self):
        if (self.particles is None) == (self.columns is None):
            raise ValueError("give exactly one of 'particles' (N x 9 rows) or 'columns' (feature name -> values)")
        return self


class InferInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list | None = None


class InferOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InferInput]
    outputs: list[InferOutput] | None = None


def inline_schema(model: type[BaseModel]) -> dict:
    """The model's JSON schema with its $defs inlined, for the OpenAPI document."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(defs[node["$ref"].split("/")[-1]])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)
