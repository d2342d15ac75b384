"""Start the Streamlit server on the dashboard's entry script (what ``linewatch dashboard`` executes).

Usage: ``python -m linewatch.dashboard.launch [streamlit run options ...]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

APP = Path(__file__).with_name("app.py")


def main(options: list[str]) -> None:
    """Run ``streamlit run dashboard/app.py OPTIONS`` in this process (does not return normally)."""
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.web import cli

    from linewatch.contracts.settings import get_settings
    from linewatch.dashboard import alarm_watch, telemetry

    # dashboard/pages/ is the package of page modules that app.py hands to st.navigation, not a
    # Streamlit "pages directory". Streamlit would otherwise detect it beside app.py and, until app.py
    # has run once, serve a direct visit to /live by running pages/live.py as a script of its own.
    PagesManager.uses_pages_directory = False
    settings = get_settings()
    telemetry.serve(settings)
    alarm_watch.watch(settings)  # alarms and their metrics from the start, before anybody opens a page
    sys.argv = ["streamlit", "run", str(APP), *options]
    cli.main()


if __name__ == "__main__":
    main(sys.argv[1:])
