"""Limits of the values a frame's headers carry, and so of the SQL columns that hold them: one home, used by
the message schema (:meth:`.messages.FrameMeta.from_headers` dead-letters a frame outside them as
``bad_headers``, since no store could take it) and by the table definitions (:mod:`.schema`)."""

ID_MAX_CHARS = 128  # camera_id, line_id, part_id: characters (VARCHAR(128) on PostgreSQL counts characters)
CONTENT_TYPE_MAX_CHARS = 64
FRAME_ID_MAX = 2**63 - 1  # SQL BIGINT
CAPTURED_AT_MIN_NS = 946_684_800 * 10**9  # 2000-01-01T00:00:00Z, in nanoseconds since the epoch
CAPTURED_AT_MAX_NS = 4_102_444_800 * 10**9  # 2100-01-01T00:00:00Z (exclusive)
PRODUCT_MAX_CHARS = 40  # a product name; "<product>/v<N>" must fit the 64 characters of a model version
