"""Which product the dashboard shows (issue 18, docs/products.md): the products the record knows, the sidebar's
product selector, and the choice every per-product page reads (:func:`selected`).

The choices are the distinct products of the inspections and of the registered models, plus ``all``; the default
is the product ``default``, or the only product when the record knows exactly one. The choice is the selectbox's
own state, bound to the URL's query parameter ``product`` (``/review?product=bottle``), so it stays across page
switches, survives a reload and can be shared as a link.
"""

from __future__ import annotations

import streamlit as st
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from linewatch.contracts.products import ALL_PRODUCTS, DEFAULT_PRODUCT
from linewatch.contracts.schema import Inspection, ModelVersion

from . import data, views

KEY = "product"  # the selectbox's key, so also the query parameter's name
MAX_PRODUCTS = 200  # more than any plant runs; bounds the index walk of known_products


def known_products(db: Engine) -> list[str]:
    """The products of the inspections and of the registered models, sorted (at most :data:`MAX_PRODUCTS`).

    The inspections' products are read by walking the index ``(product, captured_at)`` one product at a time
    (``min(product) WHERE product > last``: one index seek each), since a ``SELECT DISTINCT`` would read every row.

    Raises:
        SQLAlchemyError: the database failed or a query ran past ``dashboard.query_timeout_s``.
    """
    found: set[str] = set()
    with db.connect() as conn:
        found.update(conn.execute(select(ModelVersion.product).distinct().limit(MAX_PRODUCTS)).scalars())
        last = None
        for _ in range(MAX_PRODUCTS):
            query = select(func.min(Inspection.product))
            if last is not None:
                query = query.where(Inspection.product > last)
            last = conn.execute(query).scalar()
            if last is None:
                break
            found.add(last)
    return sorted(found)


def default_choice(products: list[str]) -> str:
    """The product shown before anyone chooses: the only one when there is exactly one, else ``default``."""
    return products[0] if len(products) == 1 else DEFAULT_PRODUCT


def choices(products: list[str]) -> list[str]:
    """The selector's options: the default choice (present even in an empty record), the others, then ``all``."""
    first = default_choice(products)
    return [first, *(p for p in products if p != first), ALL_PRODUCTS]


@st.cache_data(ttl=30, show_spinner=False)
def _known(url: str) -> list[str]:
    return known_products(data.engine())


def sidebar() -> str | None:
    """Draw the product selector in the sidebar; returns :func:`selected`."""
    try:
        products = _known(data.settings().database_url)
        problem = None
    except SQLAlchemyError as exc:
        products, problem = [], exc
    options = choices(products)
    if st.session_state.get(KEY) not in (None, *options):  # a product no longer known (or a mistyped link)
        st.session_state.pop(KEY)
    with st.sidebar:
        st.selectbox("Product", options, index=0, key=KEY, bind="query-params",
                     format_func=lambda p: "all products" if p == ALL_PRODUCTS else p,
                     help="The part type shown: defect rates, defects, the review queue and the models are those "
                          "of this product.")
        if problem is not None:
            st.caption(f"Products: {views.explain(problem)}")
    return selected()


def selected() -> str | None:
    """The product the pages show (None: every product), as chosen in the sidebar this run."""
    value = st.session_state.get(KEY) or DEFAULT_PRODUCT
    return None if value == ALL_PRODUCTS else value


def narrows(product: str | None) -> bool:
    """Whether showing ``product`` leaves frames out: a product is chosen and the record knows another one (the live
    counts in Redis are per camera and line, of every product: a page then counts from SQL)."""
    if product is None:
        return False
    try:
        return any(p != product for p in _known(data.settings().database_url))
    except SQLAlchemyError:
        return True  # unknown: count from SQL, which says itself when it cannot be read


def label(product: str | None) -> str:
    """How a page names the choice: ``product bottle``, or ``all products``."""
    return "all products" if product is None else f"product {product}"
