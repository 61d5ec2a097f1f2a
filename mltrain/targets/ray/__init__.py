"""``compute=ray``: a Ray cluster, through its Jobs API."""
