"""The HTML report of one or several run directories (``fedsynth report RUN_DIR``).

sections.py  one function per section, each reading what a run directory holds
html.py      the self-contained page: inline CSS, images as base64 data URIs, no external URL
"""
