"""The audit: archive, checkpoints, verification, replay and reports (issue 13)."""
