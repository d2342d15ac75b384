"""The Streamlit dashboard (``linewatch dashboard``): live defect rates, heatmaps, defect gallery, operator
review and models. Entry script: ``app.py``; pages: ``pages/``."""
