"""Helpers the Spark job's UDFs import on the executors (shipped there in the snapshot's --py-files zip)."""
