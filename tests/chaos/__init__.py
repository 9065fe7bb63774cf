"""Fault drills (DESIGN.md G1-G3) on a real 3-node Apache Kafka cluster of their own."""
