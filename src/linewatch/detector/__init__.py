"""Detector: the STPM model (training, scoring, evaluation) and the streaming detector workers."""
