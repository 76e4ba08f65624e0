"""Generated data with a known answer, for the demo, the tests, the benchmarks and the CVAT double.

Not part of the provider: it sits at the repository root, outside the wheel (pyproject's package
discovery includes ``airflow_cvat*`` only), and imports from the repository root (pytest puts the
root on ``sys.path``; ``scripts/demo.py`` and the benchmarks add it themselves).

* :mod:`demo_data.synthetic`: generated images whose shapes are known, written as CVAT exports.
* :mod:`demo_data.datasets`: whole datasets in the layout the export operator writes.
"""
