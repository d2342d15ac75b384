"""Real services for integration tests: Apache Kafka (KRaft), PostgreSQL and Redis, each a child
process on free loopback ports (see :mod:`linewatch.cli.embedded` for the process handling).

System packages they need: ``scripts/install-system-deps.sh``.
"""
