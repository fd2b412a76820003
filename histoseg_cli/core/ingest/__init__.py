"""Ingestion: patch datasets, annotated image folders and slides -> patches artifacts, and
the one function that turns any patch input (artifact or dataset folder) into artifacts."""
