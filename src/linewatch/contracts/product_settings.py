"""The ``[products]`` section of the settings (:mod:`.settings` assembles it with the others): which product a
camera shows when neither its frames' headers nor a recorded changeover say (:mod:`.changeovers`)."""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator

from .products import check_product


class ProductSettings(BaseModel):
    """Products (docs/products.md)."""

    cameras: dict[str, str] = Field(default_factory=dict, description="camera id -> product, for frames without a "
                                    "product header and cameras without a changeover (else the product 'default')")
    changeover_refresh_s: float = Field(1.0, gt=0, description="how often a worker rereads the changeover history, "
                                        "seconds (record a changeover at least this long ahead for an exact split)")

    @field_validator("cameras")
    @classmethod
    def _products(cls, value: dict[str, str]) -> dict[str, str]:
        for product in value.values():
            check_product(product)
        return value
