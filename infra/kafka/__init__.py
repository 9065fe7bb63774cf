"""A local Apache Kafka (KRaft) cluster from Maven jars: ``motcua kafka install|up``."""
