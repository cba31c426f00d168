"""What the recipes and benchmarks use, not the method's API: task files, the command line, result tables and
files, run settings, the techniques compared, seed summaries.

The method packages (``data``, ``tuners``, ``evaluation``) never import from here (``tests/test_imports.py``).
"""
