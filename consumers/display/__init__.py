"""Wall displays: ``motcua display`` tails the ``counters`` topic (``feed``), keeps the latest
partial per key and what each board shows (``board``), and serves kiosk pages with live
server-sent events (``app``). No database: the topic is its only input."""
