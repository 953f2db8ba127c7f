"""Output databases: the table contract (``schema``) and one writer per database kind.

``churnseg.pipelines.publish`` is the entry point; this package holds what it is built from.
"""
