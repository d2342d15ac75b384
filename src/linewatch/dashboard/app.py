"""The dashboard's entry point, run by ``linewatch dashboard`` (``streamlit run`` on this file).

Pages: Live, Defects, Review, Models, Cameras, each under the alarm banner (:mod:`.banner`). The sidebar holds the
product shown (see :mod:`.products`) and the operator's identity (see :mod:`.auth`).
"""

from __future__ import annotations

from pathlib import Path

import redis
import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from linewatch.dashboard import auth, banner, data, products, telemetry, views
from linewatch.dashboard.pages import cameras, defects, live, models, review

# A file shipped with the package: a ":material/...:" page icon makes the browser fetch it from
# fonts.gstatic.com, and a plant's network may have no internet (the page icons come from the bundled font).
FAVICON = Path(__file__).parent / "assets" / "favicon.png"


def main() -> None:
    st.set_page_config(page_title="linewatch", page_icon=str(FAVICON), layout="wide")
    try:
        settings = data.settings()
    except (ValueError, OSError) as exc:
        st.error(f"The settings are invalid: {exc}")
        return
    pages = [
        st.Page(live.render, title="Live", url_path="live", icon=":material/monitoring:", default=True),
        st.Page(defects.render, title="Defects", url_path="defects", icon=":material/report:"),
        st.Page(review.render, title="Review", url_path="review", icon=":material/rule:"),
        st.Page(models.render, title="Models", url_path="models", icon=":material/model_training:"),
        st.Page(cameras.render, title="Cameras", url_path="cameras", icon=":material/photo_camera:"),
    ]
    page = st.navigation(pages)
    with st.sidebar:
        st.markdown("### linewatch")
        st.caption("Visual quality control")
    products.sidebar()
    auth.sidebar(settings)
    telemetry.PAGE_VIEWS.labels(page.url_path or "live").inc()
    st.fragment(run_every=settings.dashboard.refresh_s)(banner.render)(settings)
    try:
        page.run()
    except (SQLAlchemyError, redis.RedisError) as exc:  # a store failed where the page did not expect it
        telemetry.STORE_ERRORS.labels("sql" if isinstance(exc, SQLAlchemyError) else "redis").inc()
        st.error(views.explain(exc))


main()
