"""DVC stages, one module each (``pipelines/<stage>.py`` calls ``kappaflow.stages.<stage>.main``).

A stage module is the only place that reads that stage's config, writes its outputs and logs its
run. No library package imports this package (checked by ``tests/test_architecture.py``).
"""
