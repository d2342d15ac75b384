"""Products (the part type a frame shows) and the names of their model versions: one home for both rules.

A product name is 1 to :data:`~.limits.PRODUCT_MAX_CHARS` characters of ``a-z 0-9 _ -``, starting with a letter or a
digit: it is a folder of the artifact store, part of a models-topic key and of a version name, so nothing that
would need escaping in any of them is allowed. A model version is ``<product>/v<N>``, N counting per product; the
product :data:`DEFAULT_PRODUCT`, which owns everything recorded before products existed, keeps the bare ``v<N>``
it always had (rows, folders, model.json files and announcements from before stay valid unchanged).
"""

from __future__ import annotations

import re

from .limits import PRODUCT_MAX_CHARS

DEFAULT_PRODUCT = "default"
ALL_PRODUCTS = "all"  # not a product: "every product" where a command or page takes one (reserved)

_PRODUCT = re.compile(rf"[a-z0-9][a-z0-9_-]{{0,{PRODUCT_MAX_CHARS - 1}}}")
_LIKE_A_VERSION = re.compile(r"v[0-9]+")
_VERSION = re.compile(r"(?:(?P<product>[^/]+)/)?v(?P<number>[1-9][0-9]{0,9})")


class ProductError(ValueError):
    """A product name or a model version name that breaks the rules above; the message says which rule."""


def check_product(name: str) -> str:
    """``name`` if it is a valid product name (see the module docstring).

    Raises:
        ProductError: empty, too long, holding a character outside ``a-z 0-9 _ -`` (upper case included), or of
            the form ``v<digits>`` (the name of a default product's version and its folder), or the reserved
            :data:`ALL_PRODUCTS`.
    """
    if not isinstance(name, str) or not _PRODUCT.fullmatch(name):
        raise ProductError(f"product {name!r} is not a product name: 1 to {PRODUCT_MAX_CHARS} characters of "
                           "a-z, 0-9, '_' and '-', starting with a letter or a digit")
    if _LIKE_A_VERSION.fullmatch(name):  # its folder <root>/v3 would be the default product's version v3
        raise ProductError(f"product {name!r} is not a product name: it reads as a version of the default product")
    if name == ALL_PRODUCTS:
        raise ProductError(f"product {name!r} is not a product name: it stands for every product in the CLI and "
                           "the dashboard")
    return name


def version_name(product: str, number: int) -> str:
    """The name of version ``number`` (>= 1) of ``product``: ``bottle/v3``, or ``v3`` for the default product.

    Raises:
        ProductError: an invalid product name or a number below 1.
    """
    check_product(product)
    if number < 1:
        raise ProductError(f"version number {number}: numbers start at 1")
    return f"v{number}" if product == DEFAULT_PRODUCT else f"{product}/v{number}"


def parse_version(version: str) -> tuple[str, int]:
    """``(product, number)`` of a version name: ``"bottle/v3"`` -> ``("bottle", 3)``, ``"v3"`` and
    ``"default/v3"`` -> ``("default", 3)``.

    Raises:
        ProductError: not of the form ``[<product>/]v<N>`` (N from 1, no leading zero), or an invalid product name.
    """
    match = _VERSION.fullmatch(version or "")
    if match is None:
        raise ProductError(f"model version {version!r} is not of the form v<N> or <product>/v<N> (e.g. bottle/v3)")
    return check_product(match["product"] or DEFAULT_PRODUCT), int(match["number"])


def canonical_version(version: str) -> str:
    """The registry's name of ``version`` (``default/v3`` -> ``v3``; others unchanged). Raises: ProductError."""
    return version_name(*parse_version(version))
