"""Prometheus metrics of a detector worker (served by ``linewatch.observability.serve_metrics``)."""

from prometheus_client import Counter, Gauge, Histogram

INSPECTED = Counter("linewatch_frames_inspected_total", "Frames inspected and stored", ["verdict"])
DEAD_LETTERED = Counter("linewatch_frames_dead_lettered_total", "Frames sent to the dead-letter topic", ["reason"])
STORE_RETRIES = Counter("linewatch_store_retries_total", "Failed writes to a sink, each retried", ["sink"])
BATCH_SIZE = Histogram("linewatch_batch_size_frames", "Frames per inference batch",
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128))
INFERENCE_SECONDS = Histogram("linewatch_inference_seconds", "Model time per batch, seconds",
                              buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
LATENCY_SECONDS = Histogram("linewatch_end_to_end_latency_seconds",
                            "From capture to the result in the SQL store, seconds",
                            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60))
CONSUMER_LAG = Gauge("linewatch_consumer_lag_frames", "Frames not yet committed, per partition", ["partition"])
MODEL_INFO = Gauge("linewatch_model_info", "The model version this worker scores with (value 1)", ["version"])
