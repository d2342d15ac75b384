"""Real services for integration tests that the product does not embed: PostgreSQL. Apache Kafka (KRaft)
and Redis are the product's own embedded ones (:mod:`linewatch.cli.embedded_kafka`,
:mod:`linewatch.cli.embedded`), each a child process on free loopback ports.

System packages they need: ``scripts/install-system-deps.sh``.
"""
