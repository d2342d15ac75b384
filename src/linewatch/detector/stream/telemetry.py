"""Prometheus metrics of a detector worker (served by ``linewatch.observability.serve_metrics``)."""

from prometheus_client import Counter, Gauge, Histogram

INSPECTED = Counter("linewatch_frames_inspected_total", "Frames inspected and stored", ["verdict"])
DEAD_LETTERED = Counter("linewatch_frames_dead_lettered_total", "Frames sent to the dead-letter topic", ["reason"])
SCORED = Counter("linewatch_frames_scored_total",
                 "Frames the model scored, redeliveries included (above inspected: work done again after a rebalance)")
STORE_RETRIES = Counter("linewatch_store_retries_total", "Failed writes to a sink, each retried", ["sink"])
BATCH_SIZE = Histogram("linewatch_batch_size_frames", "Frames per inference batch",
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128))
INFERENCE_SECONDS = Histogram("linewatch_inference_seconds", "Model time per batch, seconds",
                              buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
LATENCY_SECONDS = Histogram("linewatch_end_to_end_latency_seconds",
                            "From capture (from arrival when the camera's clock is off) to the SQL row, seconds",
                            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60))
CLOCK_SKEW = Gauge("linewatch_camera_clock_skew_seconds",
                   "The camera's capture time minus the frame's arrival, newest frame (positive: clock ahead)",
                   ["camera_id"])
CLOCK_UNTRUSTED = Counter("linewatch_frames_clock_skewed_total",
                          "Frames whose camera clock was off by more than the tolerance (latency from arrival)",
                          ["camera_id"])
CONSUMER_LAG = Gauge("linewatch_consumer_lag_frames", "Frames not yet committed, per partition", ["partition"])
IMAGES_NOT_KEPT = Counter("linewatch_images_not_kept_total",
                          "Frames to keep whose image could not be written (disk full ...); stored without it",
                          ["reason"])
LIVE_PENDING = Gauge("linewatch_live_state_pending_results", "Stored results whose live update waits for Redis")
LIVE_LEFT_TO_REBUILD = Counter("linewatch_live_state_left_to_rebuild_total",
                               "Live updates not written because the rebuild from the SQL record covers their minute")
LIVE_UNAVAILABLE = Gauge("linewatch_live_state_unavailable", "1 while this worker cannot write live state to Redis")
MODEL_INFO = Gauge("linewatch_model_info", "The model version this worker scores with (value 1)", ["version"])
IMAGE_STORE_FREE_RATIO = Gauge("linewatch_image_store_free_ratio", "Free share of the image store's file system, 0-1")
IMAGE_STORE_FULL = Gauge("linewatch_image_store_full",
                         "1 while kept frames cannot be written for lack of space (stored without their images)")
IMAGES_REMOVED = Counter("linewatch_images_removed_total", "Kept frames removed by image retention", ["reason"])
CAMERA_DRIFT = Gauge("linewatch_camera_drift",
                     "1 while the camera's lighting / exposure has drifted from the model's training images "
                     "(enough of its recent frames' statistics out of range) or its image scores from the held-out "
                     "goods' (most recent frames above their p95); linewatch.detector.drift", ["camera_id"])
CAMERA_DRIFT_Z = Gauge("linewatch_camera_drift_worst_z",
                       "The camera's largest |median robust z-score| of a frame statistic over its recent frames",
                       ["camera_id"])
