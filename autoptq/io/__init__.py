"""Files in and out, below everything else: bounded YAML, the shipped data folders, atomic output writing and
the user's metric. Imports only `autoptq.errors` and `autoptq.schema`."""
