"""Kafka clients and topics, configured one way for every service (standard Kafka semantics only).

Topics (``<prefix>`` from settings, ``linewatch`` by default):

==========================  ======================  ==================================================
topic                       partitions              purpose
==========================  ======================  ==================================================
``<prefix>.frames``         ``frames_partitions``   camera frames, keyed by camera id
``<prefix>.frames.dlq``     ``frames_partitions``   frames that could not be inspected, with the reason
``<prefix>.inspections``    ``frames_partitions``   every result, for line integration (reject gates)
``<prefix>.models``         1, compacted            the active model version (rollout to the workers)
==========================  ======================  ==================================================

Every topic but the models topic is bounded by time and by size (``kafka.frames_retention``,
``kafka.results_retention``; :func:`topic_configs`).

Parallelism is bounded by ``frames_partitions``: a consumer group never has more busy workers
than the frames topic has partitions.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import InvalidConfigurationError, KafkaError, TopicAlreadyExistsError

from .settings import KafkaSettings

log = logging.getLogger(__name__)


class KafkaNotConfiguredError(ValueError):
    """No broker is configured (``kafka.bootstrap_servers`` is empty)."""


def client_config(k: KafkaSettings) -> dict[str, Any]:
    """Connection and security options shared by producers, consumers and the admin client.

    Raises:
        KafkaNotConfiguredError: ``kafka.bootstrap_servers`` is empty.
    """
    if not k.bootstrap_servers:
        raise KafkaNotConfiguredError(
            "kafka.bootstrap_servers is empty: set LINEWATCH_KAFKA__BOOTSTRAP_SERVERS to your brokers "
            "(only `linewatch up` starts an embedded broker by itself)")
    cfg: dict[str, Any] = {"bootstrap_servers": k.bootstrap_servers.split(","),
                           "security_protocol": k.security_protocol}
    if k.sasl_mechanism:
        cfg["sasl_mechanism"] = k.sasl_mechanism
        cfg["sasl_plain_username"] = k.sasl_username
        cfg["sasl_plain_password"] = k.sasl_password.get_secret_value() if k.sasl_password else None
    if k.security_protocol in ("SSL", "SASL_SSL"):
        cfg["ssl_check_hostname"] = k.ssl_check_hostname
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            value = getattr(k, name)
            if value is not None:
                cfg[name] = str(value)
    return cfg


def make_producer(k: KafkaSettings, **overrides: Any) -> KafkaProducer:
    """An idempotent producer that waits for all in-sync replicas (acks=all) and takes frames up to
    ``max_message_bytes``; failed sends are retried by the client until ``delivery_timeout_ms``."""
    cfg = {
        **client_config(k),
        "acks": "all",
        "enable_idempotence": True,
        "max_request_size": k.max_message_bytes,
        "linger_ms": 5,
        "delivery_timeout_ms": 120_000,
        "request_timeout_ms": 30_000,
    }
    cfg.update(overrides)
    return KafkaProducer(**cfg)


# The shortest wait of a poll while the member (re-)joins its group. kafka-python 3.0 (up to 3.0.12 at least)
# starts a new JoinGroup when a poll finds the previous join finished but not yet taken up by a poll (the finished
# task is replaced, its assignment dropped): a member that polls without waiting (a busy worker) never takes one up
# when its join is quick, as a lone member's is, and rejoined after every generation (thousands, on Apache Kafka,
# in tests/test_kafka_group.py). A join that ends within this wait is taken up by the poll that waits. One that
# ends between two polls is still replaced (a leader's new JoinGroup then starts another generation): the longer
# the wait, the rarer that is. While joining, the member fetches nothing, so the wait costs no frames; it slows
# only the worker's loop (its stop check and commits), by at most this much per poll.
JOIN_POLL_MS = 1000


class GroupConsumer(KafkaConsumer):
    """A :class:`KafkaConsumer` whose :meth:`poll` works around three faults of kafka-python 3.0 (up to 3.0.12
    at least): it waits at least :data:`JOIN_POLL_MS` while the member joins its group, it resumes a
    consumer-group join that the library abandons, and it lets the library put back records it parked for a
    paused partition. They rely on private attributes of kafka-python 3.0's consumer; the coordinator and
    fetcher checks do nothing on a version without those.

    The abandoned join: ``poll`` drives a join only while ``need_rejoin()`` is true. When a rebalance is triggered by a
    metadata change (as the first member's second generation always is) and a short poll times out with
    the JoinGroup/SyncGroup still in flight, the leader's assignment step makes ``need_rejoin()`` false on
    the network thread; no later poll finishes the join. The member then holds its revoked partitions,
    never fetches and never heartbeats again, and the group's frames wait for the broker to expel it.
    Reproduced against Apache Kafka 4.1 by polling with ``timeout_ms=0`` (tests/test_kafka_group.py).

    The parked records: records already fetched for a partition that is then paused (a worker's hold while its
    pipeline is full) are parked, and the partition is not fetched while they are. The fetcher puts them back
    only when its in-line slot is None, but a record set it has read to the end stays in that slot, drained; once
    any set had been read to its end (another partition's, an empty fetch's), the paused partition was never
    fetched again, not even after a rebalance that left it with this member (only ``close`` clears the parked
    records). A drained set holds nothing, so emptying the slot before each poll loses nothing and lets the
    parked records back (reproduced in tests/test_kafka_group.py).
    """

    def poll(self, timeout_ms: int = 0, max_records: int | None = None, update_offsets: bool = True) -> dict:
        coordinator = getattr(self, "_coordinator", None)
        if timeout_ms < JOIN_POLL_MS and getattr(coordinator, "need_rejoin", bool)() and \
                self._subscription.partitions_auto_assigned():
            timeout_ms = JOIN_POLL_MS  # a join in progress: see JOIN_POLL_MS
        fetcher = getattr(self, "_fetcher", None)
        if getattr(fetcher, "_paused_partition_records", None) and \
                getattr(fetcher, "_next_partition_records", None) is not None and not fetcher._next_partition_records:
            fetcher._next_partition_records = None  # drained: the parked records of a resumed partition go next
        records = super().poll(timeout_ms=timeout_ms, max_records=max_records, update_offsets=update_offsets)
        if (getattr(coordinator, "_join_task", None) is not None and self._subscription.partitions_auto_assigned()
                and not coordinator.need_rejoin()):
            log.info("resuming an abandoned consumer-group join")
            coordinator.request_rejoin()  # the next poll awaits the join (or sends a new one)
        return records


def make_consumer(k: KafkaSettings, group_id: str | None, *topics: str, **overrides: Any) -> GroupConsumer:
    """A consumer with manual offset commits (the caller commits after its results are stored)."""
    cfg = {
        **client_config(k),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_partition_fetch_bytes": k.max_message_bytes + 65536,
        "fetch_max_bytes": max(52_428_800, 2 * k.max_message_bytes),
        "session_timeout_ms": k.session_timeout_ms,
        "heartbeat_interval_ms": k.heartbeat_interval_ms,
        "max_poll_interval_ms": k.max_poll_interval_ms,
        "fetch_max_wait_ms": k.fetch_max_wait_ms,
        "metadata_max_age_ms": 30_000,  # notice new topics and added partitions within 30 s
    }
    cfg.update(overrides)
    return GroupConsumer(*topics, **cfg)


def topic_configs(k: KafkaSettings) -> dict[str, dict[str, str]]:
    """The topic configs linewatch sets, by topic name: size limits, retention by time and by size
    (``kafka.frames_retention``, ``kafka.results_retention``), and compaction of the models topic."""
    largest = k.max_message_bytes + 65536  # a frame plus its headers and batch overhead
    size = {"max.message.bytes": str(largest)}
    return {
        # The broker stamps frames when it appends them: workers time frames by that clock, not the camera's
        # (linewatch.contracts.clock), and time-based retention never follows a camera clock a year ahead.
        k.frames_topic: {**size, **k.frames_retention.topic_configs(largest),
                         "message.timestamp.type": "LogAppendTime"},
        k.dead_letter_topic: {**size, **k.results_retention.topic_configs(largest)},
        k.inspections_topic: k.results_retention.topic_configs(),
        k.models_topic: {"cleanup.policy": "compact"},
    }


def ensure_topics(k: KafkaSettings, timeout_s: float = 30.0) -> None:
    """Create the linewatch topics that do not exist yet, with their partition counts and :func:`topic_configs`;
    on topics that exist, bring the retention configs in line with the settings (a warning where the broker
    refuses, e.g. without AlterConfigs permission).

    Brokers that reject topic configs get the topics without them, with a warning.

    Raises:
        TimeoutError: a partition has no leader after ``timeout_s``.
    """
    configs = topic_configs(k)
    partitions = {k.frames_topic: k.frames_partitions, k.dead_letter_topic: k.frames_partitions,
                  k.inspections_topic: k.frames_partitions, k.models_topic: 1}
    admin = KafkaAdminClient(**client_config(k), request_timeout_ms=int(timeout_s * 1000))
    try:
        existing = set(admin.list_topics())
        for name, count in partitions.items():
            if name in existing:
                _align_topic_configs(admin, name, configs[name])
                continue
            try:
                admin.create_topics([NewTopic(name, count, k.replication_factor, topic_configs=configs[name])])
            except TopicAlreadyExistsError:
                pass
            except InvalidConfigurationError as exc:
                log.warning("broker rejected configs of topic %s (%s); creating it without them", name, exc)
                admin.create_topics([NewTopic(name, count, k.replication_factor)])
            log.info("created topic %s (%d partitions)", name, count)
        _wait_for_leaders(admin, list(partitions), timeout_s)
    finally:
        admin.close()


def _align_topic_configs(admin: KafkaAdminClient, topic: str, wanted: dict[str, str]) -> None:
    """Set the retention, segment and timestamp-type configs of an existing ``topic`` that differ from ``wanted``
    (an incremental AlterConfigs: the topic's other configs stay as they are)."""
    keys = [key for key in wanted if key.startswith(("retention.", "segment.")) or key == "message.timestamp.type"]
    if not keys:
        return
    try:
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all")
        current = described.get("topic", {}).get(topic, {})
        changed = {key: wanted[key] for key in keys if _config_value(current.get(key)) != wanted[key]}
        if not changed:
            return
        result = admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs=changed)],
                                     incremental=True)
        outcome = result.get("topic", {}).get(topic, "OK")
        if outcome != "OK":
            raise KafkaError(outcome)
        log.info("topic %s: retention configs set to %s", topic, changed)
    except (KafkaError, ValueError, TypeError, AttributeError) as exc:
        log.warning("could not bring the retention of topic %s in line with the settings (%s); it keeps its own",
                    topic, exc)


def topic_max_message_bytes(k: KafkaSettings, topic: str, timeout_s: float = 10.0) -> int | None:
    """The largest record batch the broker accepts on ``topic`` (its ``max.message.bytes``, the broker's
    default when the topic sets none), or None when the broker does not say (no such topic, no
    DescribeConfigs permission, a broker that keeps no topic configs) or cannot be reached: ``timeout_s``
    bounds the connection (kafka-python's bootstrap, 30 s by default) as well as the request."""
    admin = None
    try:
        admin = KafkaAdminClient(**client_config(k), request_timeout_ms=int(timeout_s * 1000),
                                 bootstrap_timeout_ms=int(timeout_s * 1000))
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all")
        value = _config_value(described.get("topic", {}).get(topic, {}).get("max.message.bytes"))
        return int(value) if value not in (None, "") else None
    except (KafkaError, ValueError, TypeError, AttributeError) as exc:
        log.info("max.message.bytes of %s unknown (%s); only the producer's limit applies", topic, exc)
        return None
    finally:
        if admin is not None:
            admin.close()


def _config_value(entry: object) -> str | None:
    """The value of one entry of kafka-python's ``describe_configs`` answer (a dict with ``value``, or the value)."""
    value = entry.get("value") if isinstance(entry, dict) else entry
    return None if value is None else str(value)


def _wait_for_leaders(admin: KafkaAdminClient, names: list[str], timeout_s: float) -> None:
    """Block until every partition of ``names`` has a leader: a consumer that subscribes earlier gets
    no partitions and waits for its next metadata refresh."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            described = admin.describe_topics(names)
            ready = all(t.get("error_code", 0) == 0 and t["partitions"] and
                        all(p["leader_id"] >= 0 for p in t["partitions"]) for t in described)
        except KafkaError:
            ready = False
        if ready:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics {names} have no partition leaders after {timeout_s:.0f} s")
        time.sleep(0.2)
