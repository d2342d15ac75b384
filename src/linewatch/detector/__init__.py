"""Detector: the STPM model (training, scoring, evaluation) here, and the streaming workers in :mod:`.stream`."""
