"""The calibrated workload: a plan of the days, dossier lifecycles, the calendar, and the
simulator that drives the dossier service with them."""
