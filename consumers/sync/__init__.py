"""Background sync: a node's replica (``replica``) kept from the log by a consumer
(``consumer``)."""
