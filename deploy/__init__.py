"""Deployment assets: the Kafka pom and log config used by `larder stack`, and the production compose file."""
