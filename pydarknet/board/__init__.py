"""Darkboard: a live training dashboard (``python -m pydarknet board``), metrics over the network and charts.

- :mod:`.runs` reads run folders incrementally (``metrics.jsonl`` or ``log.csv``, ``map.txt``);
- :mod:`.server` serves the page and the JSON API and stores metrics sent over HTTP;
- :mod:`.client` has :class:`MetricsSender`, the training side of ``--log-url``;
- :mod:`.chart` draws PNG charts with OpenCV (``chart.png`` in the run folder);
- :mod:`.export` writes self-contained HTML or PNG reports.
"""
from .chart import write_chart_png
from .client import MetricsSender

__all__ = ["MetricsSender", "write_chart_png"]
