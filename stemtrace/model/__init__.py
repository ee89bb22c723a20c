"""The read model: flows, timelines, traces, planned ids and their export, from store rows.

May import: core only (and graphviz, for the export).
"""
