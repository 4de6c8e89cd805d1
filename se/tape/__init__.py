"""The WLCG Tape REST API and the simulated tape tier behind it."""
