"""The streaming detector: consumer-group workers that inspect camera frames from Kafka in micro-batches
and store the results (SQL, Redis, the inspections topic). Entry point: :func:`.main.run_worker`."""
